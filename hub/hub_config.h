// Where the Hub is, who we are to it, and how hard to try: read from the
// environment the way huggingface_hub reads it, so that both share one
// cache and one login.
//   endpoint  HF_ENDPOINT (default https://huggingface.co), no trailing '/'
//   token     HF_TOKEN, else the token file: HF_TOKEN_PATH, else
//             $HF_HOME/token, else ~/.cache/huggingface/token
//   offline   HF_HUB_OFFLINE=1/true/yes/on: no network at all; only what the
//             cache holds is served
//   cache     HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
// The token is a Secret: it is sent only to the endpoint's host (never to a
// redirect's other host) and never printed, logged, put in an error or a
// metric.
#ifndef BIGSMALL_HUB_HUB_CONFIG_H_
#define BIGSMALL_HUB_HUB_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "hub/secret.h"

namespace bigsmall::hub {

inline constexpr char kDefaultEndpoint[] = "https://huggingface.co";

struct HubConfig {
  std::string endpoint = kDefaultEndpoint;
  Secret token;  // empty: anonymous
  bool offline = false;
  std::string cache_dir;  // huggingface_hub's cache root ("hub" directory)

  // Transport (hub/http.h).
  std::chrono::milliseconds connect_timeout{10'000};
  // A transfer that receives no byte for this long is dropped and retried.
  std::chrono::milliseconds stall_timeout{30'000};
  // Attempts per request after the first, for 5xx, 429, dropped or stalled
  // connections (a resumed transfer continues where it stopped).
  int max_retries = 5;
  std::chrono::milliseconds backoff_initial{250};
  std::chrono::milliseconds backoff_max{20'000};
  // Longest Retry-After honoured; a longer one fails the request at once.
  std::chrono::milliseconds max_retry_after{60'000};
  // Parallel ranged GETs of one download and their size.
  int parallel_connections = 8;
  uint64_t part_bytes = 32ull << 20;
  // How long a file's final (CDN) URL, found by following its resolve URL's
  // redirects, is used for later ranged GETs without asking the resolve URL
  // again (presigned URLs expire; a refused one is resolved again anyway).
  std::chrono::milliseconds final_url_ttl{5 * 60'000};
  // 0: unlimited. Shared by every transfer of one HttpClient.
  uint64_t max_bytes_per_second = 0;
  std::string user_agent = "bigsmall/0.1";
};

// The environment's settings (above) over the defaults. INVALID_ARGUMENT for
// a malformed HF_ENDPOINT (not http:// or https://); an unreadable token
// file is an error only when it exists.
absl::StatusOr<HubConfig> HubConfigFromEnvironment();

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HUB_CONFIG_H_
