// HTTP for the Hub, on libcurl: one request with retries (Send), and ranged
// GETs of a large object, in parallel over libcurl multi, straight into the
// caller's memory (GetRange).
//
// Policy (HubConfig): connect timeout; a transfer with no byte for
// stall_timeout is dropped; 5xx, 429 and dropped/stalled/reset connections
// are retried up to max_retries times with exponential backoff and jitter
// (Retry-After, seconds or an HTTP date, is honoured up to max_retry_after);
// a dropped ranged GET resumes from the last byte it wrote. Redirects are
// followed here, not by libcurl, at most kMaxRedirects hops: a relative
// Location resolves against the current URL, and the Authorization header
// goes only to the endpoint's own scheme://host:port (a CDN never sees the
// token). One bandwidth limit (max_bytes_per_second) covers every transfer
// of the client. Thread-safe: many threads may call one client.
#ifndef BIGSMALL_HUB_HTTP_H_
#define BIGSMALL_HUB_HTTP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "hub/hub_config.h"

namespace bigsmall::hub {

inline constexpr int kMaxRedirects = 10;

struct HttpHeader {
  std::string name;  // lowercase
  std::string value;
};

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST, PUT
  std::string url;             // absolute
  std::vector<HttpHeader> headers;
  std::string body;            // POST/PUT
  // A streamed body instead of `body` (an LFS object): `body_size` bytes,
  // which body_reader(offset, out) gives a piece of at a time (1..out.size()
  // bytes from `offset`; an error ends the request with it, unretried). It
  // is read again from offset 0 for every retry or redirect that resends
  // the body, so it must give the same bytes each time. Memory: libcurl's
  // upload buffer, whatever body_size is.
  std::function<absl::StatusOr<size_t>(uint64_t offset, absl::Span<uint8_t> out)> body_reader;
  uint64_t body_size = 0;
  // Authorization: Bearer <token> when the config has one (endpoint host
  // only, see above).
  bool authorize = true;
  bool follow_redirects = true;
  // Retries per the config; false for calls that must not repeat (a commit).
  bool retry = true;
  // An answer body larger than this is RESOURCE_EXHAUSTED (API answers are
  // small; bulk bytes go through GetRange).
  uint64_t max_body = 16ull << 20;
};

struct HttpResponse {
  long status = 0;
  std::string url;  // after redirects
  std::vector<HttpHeader> headers;  // of the last answer
  std::string body;
  // Whether the last request carried the token (HttpError tells "needs a
  // token" from "the token was refused" by it).
  bool authorized = false;
  // The first header of that name (lowercase), or nullptr.
  const std::string* Header(absl::string_view name) const;
};

// The status for a non-2xx answer: 401 UNAUTHENTICATED ("needs a token" or
// "the token was refused"), 403 PERMISSION_DENIED (a gated repo says how to
// request access), 404 NOT_FOUND (X-Error-Code tells repo, revision or file
// apart), 416 OUT_OF_RANGE, 429 RESOURCE_EXHAUSTED, 5xx UNAVAILABLE, any
// other 4xx INVALID_ARGUMENT. The message starts with `what`, carries the
// Hub's X-Error-Message escaped, and never the token.
absl::Status HttpError(const HttpResponse& response, absl::string_view what);

struct TransferStats {
  uint64_t requests = 0;
  uint64_t bytes = 0;      // body bytes received
  uint64_t retries = 0;
  uint64_t errors = 0;     // requests that failed after their retries
};

// How a GetRange goes (the defaults are the four-argument GetRange's).
struct RangeOptions {
  uint64_t total_size = 0;  // when known: checked against Content-Range's
  int connections = 0;      // parallel ranged GETs; 0: config's
  // When it becomes true, the GetRange stops within ~0.2 s: CANCELLED.
  const std::atomic<bool>* cancel = nullptr;
};

class HttpClient {
 public:
  explicit HttpClient(HubConfig config);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One request, retried per the policy; returns the final answer whatever
  // its status (map it with HttpError). A network failure after the
  // retries is UNAVAILABLE naming the host.
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);

  // Bytes [offset, offset + out.size()) of `url` into `out`, in up to
  // parallel_connections ranged GETs, following redirects (once; the parts
  // then go to the final URL). The final URL is remembered for
  // config.final_url_ttl: a later GetRange of the same `url` goes straight
  // to it (one request, not resolve + CDN), and back to `url` when the CDN
  // answers 401, 403, 404 or 410 (an expired or refused presigned URL). Every answer must be 206 with the matching
  // Content-Range (or 200 with exactly the object when it is all of it);
  // anything else is DATA_LOSS or the HttpError. `total_size`, when known,
  // is checked against Content-Range's total. On error nothing of `out` is
  // promised, and no transfer still writes it. HTTP has no checksum of the
  // bytes: a corrupted body arrives as sent; the caller verifies them
  // (sha256 of an LFS object, the .bs checksums).
  absl::Status GetRange(const std::string& url, uint64_t offset, absl::Span<uint8_t> out,
                        uint64_t total_size = 0);
  absl::Status GetRange(const std::string& url, uint64_t offset, absl::Span<uint8_t> out,
                        const RangeOptions& options);

  TransferStats stats() const;
  const HubConfig& config() const { return config_; }

 private:
  struct Impl;
  HubConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigsmall::hub

#endif  // BIGSMALL_HUB_HTTP_H_
