#include "hub/http.h"

#include <curl/curl.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "codec/status_util.h"
#include "hub/hub_parse.h"

namespace bigsmall::hub {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint64_t kMinPartBytes = 1ull << 20;
// All response headers of one answer together; the Hub's are a few KiB.
constexpr size_t kMaxHeaderBytes = 256 << 10;
// What an error answer's body may add to memory (HttpError only reads the
// headers; the body is kept for the caller's curiosity).
constexpr size_t kMaxErrorBody = 64 << 10;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// ---------------------------------------------------------------- URLs

struct Origin {
  std::string scheme, host, port;
  bool operator==(const Origin& o) const {
    return scheme == o.scheme && host == o.host && port == o.port;
  }
};

std::optional<Origin> ParseOrigin(const std::string& url) {
  CURLU* u = curl_url();
  if (u == nullptr) return std::nullopt;
  std::optional<Origin> out;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char* scheme = nullptr;
    char* host = nullptr;
    char* port = nullptr;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
      out = Origin{absl::AsciiStrToLower(scheme), absl::AsciiStrToLower(host), port};
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(u);
  return out;
}

// The URL as it may appear in a message: scheme://host[:port]/path, without
// user info (a password or token), query (a CDN's signature) or fragment,
// escaped.
std::string SafeUrl(const std::string& url) {
  CURLU* u = curl_url();
  std::string out;
  if (u != nullptr && curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    curl_url_set(u, CURLUPART_USER, nullptr, 0);
    curl_url_set(u, CURLUPART_PASSWORD, nullptr, 0);
    curl_url_set(u, CURLUPART_OPTIONS, nullptr, 0);
    curl_url_set(u, CURLUPART_QUERY, nullptr, 0);
    curl_url_set(u, CURLUPART_FRAGMENT, nullptr, 0);
    char* text = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &text, 0) == CURLUE_OK) out = text;
    curl_free(text);
  } else {
    // Not parseable: keep what precedes any '@', '?' or '#'-free prefix
    // cannot be told apart, so say nothing of it.
    out = "<malformed URL>";
  }
  curl_url_cleanup(u);
  return EscapeForLog(out);
}

std::string HostOf(const std::string& url) {
  std::optional<Origin> o = ParseOrigin(url);
  if (!o) return "<malformed URL>";
  return EscapeForLog(absl::StrCat(o->host, ":", o->port));
}

// `location` resolved against `base` (RFC 3986); only http and https.
absl::StatusOr<std::string> ResolveLocation(const std::string& base, const std::string& location) {
  CURLU* u = curl_url();
  if (u == nullptr) return absl::ResourceExhaustedError("curl_url");
  absl::StatusOr<std::string> out =
      absl::UnavailableError(absl::StrCat("redirect from ", SafeUrl(base), " to a malformed Location"));
  if (curl_url_set(u, CURLUPART_URL, base.c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, location.c_str(), 0) == CURLUE_OK) {
    char* text = nullptr;
    char* scheme = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &text, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK) {
      std::string s = absl::AsciiStrToLower(scheme);
      if (s == "http" || s == "https") {
        out = std::string(text);
      } else {
        out = absl::UnavailableError(absl::StrCat("redirect from ", SafeUrl(base),
                                                  " to a non-HTTP URL refused"));
      }
    }
    curl_free(text);
    curl_free(scheme);
  }
  curl_url_cleanup(u);
  return out;
}

// ---------------------------------------------------------------- policy

bool RetryableCurl(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_AGAIN:
      return true;
    default:
      return false;
  }
}

bool RetryableStatus(long status) { return status == 429 || (status >= 500 && status <= 599); }

// Retry-After (hub_parse.h); nullopt when absent or unreadable (then the
// backoff applies).
std::optional<milliseconds> ParseRetryAfter(const std::string* value) {
  if (value == nullptr) return std::nullopt;
  return hub::ParseRetryAfter(*value, time(nullptr));
}

milliseconds Backoff(const HubConfig& config, int attempt) {
  double base = static_cast<double>(std::max<int64_t>(config.backoff_initial.count(), 0));
  double cap = static_cast<double>(std::max<int64_t>(config.backoff_max.count(), 0));
  double d = base;
  for (int i = 0; i < attempt && d < cap; ++i) d *= 2;
  d = std::min(d, cap);
  // "Equal jitter": half fixed, half random, so that parallel parts and
  // clients do not retry in lockstep.
  thread_local std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> dist(0.5, 1.0);
  return milliseconds(static_cast<int64_t>(d * dist(rng)));
}

std::string Lower(absl::string_view s) { return absl::AsciiStrToLower(s); }

// ---------------------------------------------------------------- throttle

// One token bucket for all transfers of a client. A receiver takes what it
// got and, when the bucket is in debt, sleeps until the debt is paid: the
// sum over all transfers converges to the rate.
class TokenBucket {
 public:
  explicit TokenBucket(uint64_t rate) : rate_(rate) {
    burst_ = std::max<double>(static_cast<double>(rate) / 8, 16384);
    tokens_ = burst_;
    last_ = Clock::now();
  }
  bool limited() const { return rate_ > 0; }
  void Take(size_t n) {
    if (rate_ == 0) return;
    double wait_s = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Clock::time_point now = Clock::now();
      double elapsed = std::chrono::duration<double>(now - last_).count();
      last_ = now;
      tokens_ = std::min(burst_, tokens_ + elapsed * static_cast<double>(rate_));
      tokens_ -= static_cast<double>(n);
      if (tokens_ < 0) wait_s = -tokens_ / static_cast<double>(rate_);
    }
    if (wait_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait_s));
  }

 private:
  const uint64_t rate_;
  double burst_;
  // std::mutex, not absl::Mutex: the system's absl is not built for TSan,
  // which then cannot see its locking.
  std::mutex mu_;
  double tokens_;  // guarded by mu_
  Clock::time_point last_;  // guarded by mu_
};

// ---------------------------------------------------------------- one transfer

struct GetRangeState;
struct Part;

struct Stats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> errors{0};
};

// What one request's callbacks collect.
struct Transfer {
  Stats* stats = nullptr;
  TokenBucket* bucket = nullptr;
  long status = 0;
  std::vector<HttpHeader> headers;
  size_t header_bytes = 0;
  bool headers_done = false;
  bool too_big = false;   // body over max_body
  bool headers_too_big = false;
  bool stalled = false;   // no byte either way for stall_timeout
  Clock::time_point last_activity = Clock::now();
  curl_off_t last_total = 0;
  milliseconds stall_timeout{0};
  std::string body;
  uint64_t max_body = 0;
  // Ranged parts: the body goes to the part's memory instead.
  Part* part = nullptr;
  // A streamed request body (HttpRequest::body_reader), and where it is.
  const HttpRequest* upload = nullptr;
  uint64_t upload_offset = 0;
  absl::Status abort;     // set by a callback that stopped the transfer
  char errbuf[CURL_ERROR_SIZE] = {0};

  const std::string* Header(absl::string_view name) const {
    for (const HttpHeader& h : headers) {
      if (h.name == name) return &h.value;
    }
    return nullptr;
  }
};

// One ranged GET: [start, end) of `out` (offsets relative to the range's
// offset), `next` the first byte not yet written.
struct Part {
  GetRangeState* state = nullptr;
  uint64_t start = 0, end = 0, next = 0;
  int retries = 0;
  int hops = 0;
  bool reresolved = false;  // went back to the original URL once already
  std::string url;          // empty: the final URL, once known
  bool validated = false;  // this attempt's answer passed the checks
  Clock::time_point not_before{};
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  Transfer transfer;
};

struct GetRangeState {
  std::string original_url;
  std::string final_url;
  bool resolved = false;      // final_url known (part 0's answer came)
  bool cached_final = false;  // final_url came from the client's memory
  bool redirected = false;    // a part followed redirects to final_url now
  const std::atomic<bool>* cancel = nullptr;
  bool whole_object = false;  // a 200 answered for everything
  uint64_t offset = 0;
  uint64_t total_size = 0;
  absl::Span<uint8_t> out;
};

size_t HeaderCallback(char* data, size_t size, size_t count, void* user) {
  Transfer* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  t->header_bytes += n;
  if (t->header_bytes > kMaxHeaderBytes) {
    t->headers_too_big = true;
    return 0;
  }
  absl::string_view line(data, n);
  if (absl::StartsWith(line, "HTTP/")) {
    // A new answer (after a 100 Continue, say): its headers only.
    t->headers.clear();
    t->headers_done = false;
    t->status = 0;
    std::vector<absl::string_view> words =
        absl::StrSplit(absl::StripAsciiWhitespace(line), ' ', absl::SkipEmpty());
    int code = 0;
    if (words.size() >= 2 && absl::SimpleAtoi(words[1], &code)) t->status = code;
    return n;
  }
  absl::string_view stripped = absl::StripAsciiWhitespace(line);
  if (stripped.empty()) {
    t->headers_done = true;
    return n;
  }
  size_t colon = stripped.find(':');
  if (colon == absl::string_view::npos) return n;
  t->headers.push_back(HttpHeader{Lower(absl::StripAsciiWhitespace(stripped.substr(0, colon))),
                                  std::string(absl::StripAsciiWhitespace(stripped.substr(colon + 1)))});
  return n;
}

// Stall detection, to the millisecond of stall_timeout rather than
// libcurl's LOW_SPEED average over several seconds: no byte received or sent
// for that long aborts the transfer (then retried like a dropped one).
int ProgressCallback(void* user, curl_off_t, curl_off_t dlnow, curl_off_t, curl_off_t ulnow) {
  Transfer* t = static_cast<Transfer*>(user);
  const Clock::time_point now = Clock::now();
  const curl_off_t total = dlnow + ulnow + static_cast<curl_off_t>(t->header_bytes);
  if (total != t->last_total) {
    t->last_total = total;
    t->last_activity = now;
    return 0;
  }
  if (t->stall_timeout.count() > 0 && now - t->last_activity > t->stall_timeout) {
    t->stalled = true;
    return 1;
  }
  return 0;
}

// libcurl's own words on a failure ("Failed to connect to ... port ...:
// Connection refused"), escaped; "" when it has none.
std::string Detail(const Transfer& t) {
  if (t.stalled) return " (no byte for the stall timeout)";
  if (t.errbuf[0] == '\0') return "";
  return absl::StrCat(" (", EscapeForLog(t.errbuf, 200), ")");
}

size_t BodyCallback(char* data, size_t size, size_t count, void* user) {
  Transfer* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  t->stats->bytes.fetch_add(n, std::memory_order_relaxed);
  if (t->body.size() + n > t->max_body) {
    t->too_big = true;
    return 0;
  }
  t->body.append(data, n);
  t->bucket->Take(n);
  return n;
}

// A streamed request body: the next piece from the caller's reader.
size_t ReadCallback(char* buffer, size_t size, size_t count, void* user) {
  Transfer* t = static_cast<Transfer*>(user);
  const HttpRequest& r = *t->upload;
  const uint64_t left = r.body_size - std::min(r.body_size, t->upload_offset);
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size * count, left));
  if (want == 0) return 0;
  absl::StatusOr<size_t> got =
      r.body_reader(t->upload_offset, absl::MakeSpan(reinterpret_cast<uint8_t*>(buffer), want));
  if (!got.ok()) {
    t->abort = got.status();
    return CURL_READFUNC_ABORT;
  }
  if (*got == 0 || *got > want) {
    t->abort = absl::FailedPreconditionError(
        absl::StrCat("the request body's reader gave ", *got, " bytes at ", t->upload_offset,
                     " where 1..", want, " were asked for (", r.body_size, " in all)"));
    return CURL_READFUNC_ABORT;
  }
  t->upload_offset += *got;
  return *got;
}

// libcurl rewinds a streamed body to resend it (a redirect, an auth retry).
int SeekCallback(void* user, curl_off_t offset, int origin) {
  Transfer* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->upload->body_size) {
    return CURL_SEEKFUNC_FAIL;
  }
  t->upload_offset = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

// Content-Range (hub_parse.h).
bool ParseContentRange(const std::string* value, uint64_t* a, uint64_t* b,
                       std::optional<uint64_t>* total) {
  if (value == nullptr) return false;
  std::optional<ContentRange> r = hub::ParseContentRange(*value);
  if (!r) return false;
  *a = r->first;
  *b = r->last;
  *total = r->total;
  return true;
}

// The first body byte of a part's answer: is it the bytes we asked for?
absl::Status ValidatePart(Part* p) {
  Transfer& t = p->transfer;
  GetRangeState& st = *p->state;
  const uint64_t want_a = st.offset + p->next;
  const uint64_t want_b = st.offset + p->end - 1;
  if (t.status == 206) {
    uint64_t a = 0, b = 0;
    std::optional<uint64_t> total;
    const std::string* cr = t.Header("content-range");
    if (!ParseContentRange(cr, &a, &b, &total)) {
      return absl::DataLossError(absl::StrCat(
          "GET ", SafeUrl(p->url), ": 206 answer with a missing or malformed Content-Range (",
          cr != nullptr ? EscapeForLog(*cr, 80) : "none", ")"));
    }
    if (a != want_a || b != want_b || (st.total_size != 0 && total && *total != st.total_size) ||
        (st.total_size != 0 && !total)) {
      return absl::DataLossError(absl::StrCat(
          "GET ", SafeUrl(p->url), ": asked for bytes ", want_a, "-", want_b,
          st.total_size != 0 ? absl::StrCat(" of ", st.total_size) : std::string(),
          ", the answer's Content-Range is ", EscapeForLog(*cr, 80)));
    }
    return absl::OkStatus();
  }
  if (t.status == 200) {
    // The server ignored Range: acceptable only when the answer is the whole
    // object and that is exactly the range asked for.
    const std::string* cl = t.Header("content-length");
    uint64_t length = 0;
    const bool whole = st.offset == 0 && p->next == 0 && cl != nullptr &&
                       absl::SimpleAtoi(*cl, &length) && length == st.out.size() &&
                       (st.total_size == 0 || st.total_size == length) &&
                       (p->end == st.out.size() || !st.resolved);
    if (!whole) {
      return absl::DataLossError(absl::StrCat(
          "GET ", SafeUrl(p->url), ": asked for bytes ", want_a, "-", want_b,
          ", the server answered 200 with ", cl != nullptr ? EscapeForLog(*cl, 40) : "unknown",
          " bytes instead of 206"));
    }
    p->end = st.out.size();
    st.whole_object = true;
    return absl::OkStatus();
  }
  return absl::OkStatus();  // not a success: handled when the transfer ends
}

size_t PartBodyCallback(char* data, size_t size, size_t count, void* user) {
  Transfer* t = static_cast<Transfer*>(user);
  Part* p = t->part;
  const size_t n = size * count;
  t->stats->bytes.fetch_add(n, std::memory_order_relaxed);
  if (t->status < 200 || t->status > 299) {
    // An error or redirect answer's body: keep a little, write nothing.
    size_t keep = std::min(n, kMaxErrorBody - std::min(kMaxErrorBody, t->body.size()));
    t->body.append(data, keep);
    return n;
  }
  if (!p->validated) {
    absl::Status s = ValidatePart(p);
    if (!s.ok()) {
      t->abort = std::move(s);
      return 0;
    }
    p->validated = true;
    p->state->final_url = p->url;
    if (p->hops > 0) p->state->redirected = true;
    p->state->resolved = true;
  }
  const uint64_t room = p->end - p->next;
  if (n > room) {
    t->abort = absl::DataLossError(absl::StrCat("GET ", SafeUrl(p->url),
                                                ": the answer is longer than the range asked for"));
    return 0;
  }
  std::memcpy(p->state->out.data() + p->next, data, n);
  p->next += n;
  t->bucket->Take(n);
  return n;
}

}  // namespace

// ---------------------------------------------------------------- the client

struct HttpClient::Impl {
  explicit Impl(const HubConfig& c) : config(c), bucket(c.max_bytes_per_second) {
    GlobalInit();
    endpoint_origin = ParseOrigin(config.endpoint);
    share = curl_share_init();
    if (share != nullptr) {
      curl_share_setopt(share, CURLSHOPT_LOCKFUNC, &Impl::Lock);
      curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, &Impl::Unlock);
      curl_share_setopt(share, CURLSHOPT_USERDATA, this);
      curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
      curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    }
  }
  ~Impl() {
    for (CURL* e : easy_pool) curl_easy_cleanup(e);
    for (CURLM* m : multi_pool) curl_multi_cleanup(m);
    if (share != nullptr) curl_share_cleanup(share);
  }

  static void Lock(CURL*, curl_lock_data data, curl_lock_access, void* user) {
    static_cast<Impl*>(user)->share_mu[LockIndex(data)].lock();
  }
  static void Unlock(CURL*, curl_lock_data data, void* user) {
    static_cast<Impl*>(user)->share_mu[LockIndex(data)].unlock();
  }
  static size_t LockIndex(curl_lock_data data) {
    size_t i = static_cast<size_t>(data);
    return i < kLocks ? i : 0;
  }

  CURL* TakeEasy() {
    {
      std::lock_guard<std::mutex> lock(pool_mu);
      if (!easy_pool.empty()) {
        CURL* e = easy_pool.back();
        easy_pool.pop_back();
        curl_easy_reset(e);
        return e;
      }
    }
    return curl_easy_init();
  }
  void GiveEasy(CURL* e) {
    if (e == nullptr) return;
    std::lock_guard<std::mutex> lock(pool_mu);
    easy_pool.push_back(e);
  }
  CURLM* TakeMulti() {
    {
      std::lock_guard<std::mutex> lock(pool_mu);
      if (!multi_pool.empty()) {
        CURLM* m = multi_pool.back();
        multi_pool.pop_back();
        return m;
      }
    }
    CURLM* m = curl_multi_init();
    // Parallel parts are parallel connections: no HTTP/2 multiplexing of
    // them onto one.
    if (m != nullptr) curl_multi_setopt(m, CURLMOPT_PIPELINING, CURLPIPE_NOTHING);
    return m;
  }
  void GiveMulti(CURLM* m) {
    if (m == nullptr) return;
    std::lock_guard<std::mutex> lock(pool_mu);
    multi_pool.push_back(m);
  }

  // Whether `url` may see the token: the endpoint's scheme://host:port only.
  bool MayAuthorize(const std::string& url) const {
    if (config.token.empty() || !endpoint_origin) return false;
    std::optional<Origin> o = ParseOrigin(url);
    return o && *o == *endpoint_origin;
  }

  // Never let the token reach a message, whatever the server echoes.
  std::string Scrub(std::string text) const {
    if (!config.token.empty()) {
      absl::StrReplaceAll({{config.token.Reveal(), "<redacted>"}}, &text);
    }
    return text;
  }
  absl::Status Scrub(const absl::Status& s) const {
    if (s.ok() || config.token.empty() ||
        !absl::StrContains(s.message(), config.token.Reveal())) {
      return s;
    }
    return absl::Status(s.code(), Scrub(std::string(s.message())));
  }

  // The options every request gets; `headers` is owned by the caller.
  void CommonOptions(CURL* e, Transfer* t) {
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(std::max<int64_t>(config.connect_timeout.count(), 1)));
    const int64_t stall_s = std::max<int64_t>((config.stall_timeout.count() + 999) / 1000, 1);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(stall_s));
    curl_easy_setopt(e, CURLOPT_USERAGENT, config.user_agent.c_str());
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &HeaderCallback);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, &ProgressCallback);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
    t->stall_timeout = config.stall_timeout;
    t->last_activity = Clock::now();
    if (share != nullptr) curl_easy_setopt(e, CURLOPT_SHARE, share);
    if (bucket.limited()) {
      // Small reads, so that the shared bucket's sleeps stay short.
      long buffer = static_cast<long>(
          std::clamp<uint64_t>(config.max_bytes_per_second / 16, 1024, CURL_MAX_WRITE_SIZE));
      curl_easy_setopt(e, CURLOPT_BUFFERSIZE, buffer);
    }
    t->stats = &stats;
    t->bucket = &bucket;
  }

  // The request's headers plus Authorization when `url` may have it.
  curl_slist* BuildHeaders(const std::vector<HttpHeader>& extra, const std::string& url,
                           bool authorize, bool caller_auth_allowed, bool* authorized) {
    curl_slist* list = nullptr;
    bool has_content_type = false;
    bool has_authorization = false;
    for (const HttpHeader& h : extra) {
      std::string name = Lower(h.name);
      // The caller's own credentials (an LFS action's header) go only to
      // the origin they were given for.
      if (name == "authorization" && !caller_auth_allowed) continue;
      if (name == "authorization") has_authorization = true;
      if (name == "content-type") has_content_type = true;
      std::string line = absl::StrCat(h.name, ": ", h.value);
      list = curl_slist_append(list, line.c_str());
      if (name == "authorization") explicit_bzero(line.data(), line.size());
    }
    if (!has_content_type) list = curl_slist_append(list, "Content-Type:");
    list = curl_slist_append(list, "Expect:");
    *authorized = has_authorization;
    if (authorize && !has_authorization && MayAuthorize(url)) {
      std::string line = absl::StrCat("Authorization: Bearer ", config.token.Reveal());
      list = curl_slist_append(list, line.c_str());
      explicit_bzero(line.data(), line.size());
      *authorized = true;
    }
    return list;
  }

  static void FreeHeaders(curl_slist* list) {
    for (curl_slist* l = list; l != nullptr; l = l->next) {
      if (l->data != nullptr && absl::StartsWithIgnoreCase(l->data, "authorization:")) {
        explicit_bzero(l->data, strlen(l->data));
      }
    }
    curl_slist_free_all(list);
  }

  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);
  absl::Status GetRange(const std::string& url, uint64_t offset, absl::Span<uint8_t> out,
                        const RangeOptions& options);
  absl::Status RunParts(CURLM* multi, GetRangeState& st, std::vector<Part>& parts,
                        size_t concurrency);
  // What to do with a part whose transfer ended; an error ends the GetRange.
  absl::Status FinishPart(Part& p, CURLcode code, std::deque<size_t>& pending, size_t index);

  const HubConfig& config;
  std::optional<Origin> endpoint_origin;
  CURLSH* share = nullptr;
  static constexpr size_t kLocks = 16;
  std::mutex share_mu[kLocks];
  std::mutex pool_mu;
  std::vector<CURL*> easy_pool;
  std::vector<CURLM*> multi_pool;
  Stats stats;
  TokenBucket bucket;

  // Final URLs of resolve URLs (GetRange): the URL and when it was found.
  struct FinalUrl {
    std::string url;
    Clock::time_point found;
  };
  static constexpr size_t kMaxFinalUrls = 4096;
  std::mutex final_mu;
  std::map<std::string, FinalUrl> final_urls;  // guarded by final_mu

  std::optional<std::string> CachedFinalUrl(const std::string& url) {
    std::lock_guard<std::mutex> lock(final_mu);
    auto it = final_urls.find(url);
    if (it == final_urls.end()) return std::nullopt;
    if (Clock::now() - it->second.found >= config.final_url_ttl) {
      final_urls.erase(it);
      return std::nullopt;
    }
    return it->second.url;
  }
  void RememberFinalUrl(const std::string& url, const std::string& final_url) {
    std::lock_guard<std::mutex> lock(final_mu);
    if (final_urls.size() >= kMaxFinalUrls && final_urls.count(url) == 0) final_urls.clear();
    final_urls[url] = FinalUrl{final_url, Clock::now()};
  }
  void ForgetFinalUrl(const std::string& url) {
    std::lock_guard<std::mutex> lock(final_mu);
    final_urls.erase(url);
  }
};

const std::string* HttpResponse::Header(absl::string_view name) const {
  for (const HttpHeader& h : headers) {
    if (h.name == name) return &h.value;
  }
  return nullptr;
}

HttpClient::HttpClient(HubConfig config)
    : config_(std::move(config)), impl_(std::make_unique<Impl>(config_)) {}

HttpClient::~HttpClient() = default;

TransferStats HttpClient::stats() const {
  TransferStats s;
  s.requests = impl_->stats.requests.load();
  s.bytes = impl_->stats.bytes.load();
  s.retries = impl_->stats.retries.load();
  s.errors = impl_->stats.errors.load();
  return s;
}

absl::StatusOr<HttpResponse> HttpClient::Send(const HttpRequest& request) {
  absl::StatusOr<HttpResponse> r = impl_->Send(request);
  if (!r.ok()) {
    impl_->stats.errors.fetch_add(1, std::memory_order_relaxed);
    return impl_->Scrub(r.status());
  }
  if (r->status >= 400) impl_->stats.errors.fetch_add(1, std::memory_order_relaxed);
  return r;
}

absl::Status HttpClient::GetRange(const std::string& url, uint64_t offset, absl::Span<uint8_t> out,
                                  uint64_t total_size) {
  RangeOptions options;
  options.total_size = total_size;
  return GetRange(url, offset, out, options);
}

absl::Status HttpClient::GetRange(const std::string& url, uint64_t offset, absl::Span<uint8_t> out,
                                  const RangeOptions& options) {
  absl::Status s = impl_->GetRange(url, offset, out, options);
  if (!s.ok()) {
    impl_->stats.errors.fetch_add(1, std::memory_order_relaxed);
    return impl_->Scrub(s);
  }
  return s;
}

absl::StatusOr<HttpResponse> HttpClient::Impl::Send(const HttpRequest& request) {
  if (config.offline) {
    return absl::FailedPreconditionError(absl::StrCat(
        request.method, " ", SafeUrl(request.url), ": offline (HF_HUB_OFFLINE is set)"));
  }
  std::string method = absl::AsciiStrToUpper(request.method);
  std::string url = request.url;
  std::optional<Origin> first_origin = ParseOrigin(url);
  if (!first_origin || (first_origin->scheme != "http" && first_origin->scheme != "https")) {
    return absl::InvalidArgumentError(
        absl::StrCat(method, " ", SafeUrl(url), ": not an absolute http(s) URL"));
  }
  const bool stream_body = request.body_reader != nullptr;
  if (stream_body && !request.body.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(method, " ", SafeUrl(url), ": both a body and a body reader"));
  }
  bool send_body = !request.body.empty() || stream_body || method == "POST" || method == "PUT";
  CURL* e = TakeEasy();
  if (e == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  struct Give {
    Impl* impl;
    CURL* e;
    ~Give() { impl->GiveEasy(e); }
  } give{this, e};

  for (int hop = 0;; ++hop) {
    Transfer t;
    bool authorized = false;
    int attempt = 0;
    CURLcode code = CURLE_OK;
    while (true) {
      t = Transfer();
      curl_easy_reset(e);
      CommonOptions(e, &t);
      t.max_body = request.max_body;
      curl_easy_setopt(e, CURLOPT_URL, url.c_str());
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &BodyCallback);
      curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
      std::optional<Origin> here = ParseOrigin(url);
      curl_slist* headers =
          BuildHeaders(request.headers, url, request.authorize, here && *here == *first_origin,
                       &authorized);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
      if (method == "HEAD") {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
      } else if (method == "GET") {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
      } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str());
      }
      if (send_body && method != "GET" && method != "HEAD" && stream_body) {
        // POST's machinery with the method kept (CUSTOMREQUEST above): a
        // Content-Length of body_size, bytes from the reader, from 0 on
        // every attempt (t is new).
        t.upload = &request;
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         static_cast<curl_off_t>(request.body_size));
        curl_easy_setopt(e, CURLOPT_READFUNCTION, &ReadCallback);
        curl_easy_setopt(e, CURLOPT_READDATA, &t);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, &SeekCallback);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, &t);
      } else if (send_body && method != "GET" && method != "HEAD") {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         static_cast<curl_off_t>(request.body.size()));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, request.body.data());
      }
      stats.requests.fetch_add(1, std::memory_order_relaxed);
      code = curl_easy_perform(e);
      if (t.stalled) code = CURLE_OPERATION_TIMEDOUT;
      FreeHeaders(headers);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, nullptr);
      if (!t.abort.ok()) return t.abort;  // the body reader failed
      if (t.too_big) {
        return absl::ResourceExhaustedError(
            absl::StrCat(method, " ", SafeUrl(url), ": the answer is larger than ",
                         request.max_body, " bytes"));
      }
      if (t.headers_too_big) {
        return absl::ResourceExhaustedError(absl::StrCat(
            method, " ", SafeUrl(url), ": the answer's headers exceed ", kMaxHeaderBytes, " bytes"));
      }
      std::optional<milliseconds> delay;
      if (code != CURLE_OK) {
        if (!RetryableCurl(code) || !request.retry || attempt >= config.max_retries) {
          return absl::UnavailableError(absl::StrCat(
              method, " ", SafeUrl(url), ": network failure talking to ", HostOf(url), ": ",
              curl_easy_strerror(code), Detail(t),
              attempt > 0 ? absl::StrCat(" (after ", attempt, " retries)") : std::string()));
        }
        delay = Backoff(config, attempt);
      } else {
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        t.status = status;
        if (!RetryableStatus(status) || !request.retry || attempt >= config.max_retries) break;
        std::optional<milliseconds> after = ParseRetryAfter(t.Header("retry-after"));
        if (after && *after > config.max_retry_after) break;  // the caller gets the 429/503
        delay = after ? *after : Backoff(config, attempt);
      }
      ++attempt;
      stats.retries.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(*delay);
    }

    const long status = t.status;
    const std::string* location = t.Header("location");
    const bool redirect = status == 301 || status == 302 || status == 303 || status == 307 ||
                          status == 308;
    if (redirect && request.follow_redirects && location != nullptr) {
      if (hop >= kMaxRedirects) {
        return absl::FailedPreconditionError(absl::StrCat(
            method, " ", SafeUrl(request.url), ": more than ", kMaxRedirects, " redirects"));
      }
      absl::StatusOr<std::string> next = ResolveLocation(url, *location);
      if (!next.ok()) return next.status();
      url = std::move(*next);
      // As browsers and requests do: 303 (and 301/302 after a POST) become GET.
      if (status == 303 || ((status == 301 || status == 302) && method == "POST")) {
        if (method != "HEAD") method = "GET";
        send_body = false;
      }
      continue;
    }
    HttpResponse response;
    response.status = status;
    response.url = url;
    response.headers = std::move(t.headers);
    response.body = std::move(t.body);
    response.authorized = authorized;
    if (!config.token.empty()) {
      for (HttpHeader& h : response.headers) h.value = Scrub(std::move(h.value));
      if (status >= 400) response.body = Scrub(std::move(response.body));
    }
    return response;
  }
}

// ---------------------------------------------------------------- GetRange

absl::Status HttpClient::Impl::GetRange(const std::string& url, uint64_t offset,
                                        absl::Span<uint8_t> out, const RangeOptions& options) {
  const uint64_t total_size = options.total_size;
  const std::string what = absl::StrCat("GET ", SafeUrl(url));
  if (config.offline) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": offline (HF_HUB_OFFLINE is set)"));
  }
  if (total_size != 0 && (offset > total_size || out.size() > total_size - offset)) {
    return absl::OutOfRangeError(absl::StrCat(what, ": bytes ", offset, "+", out.size(),
                                              " lie beyond the object's ", total_size));
  }
  if (out.empty()) return absl::OkStatus();
  std::optional<Origin> origin = ParseOrigin(url);
  if (!origin || (origin->scheme != "http" && origin->scheme != "https")) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not an absolute http(s) URL"));
  }

  GetRangeState st;
  st.original_url = url;
  st.final_url = url;
  st.offset = offset;
  st.total_size = total_size;
  st.out = out;
  st.cancel = options.cancel;
  if (std::optional<std::string> known = CachedFinalUrl(url)) {
    st.final_url = std::move(*known);
    st.resolved = true;
    st.cached_final = true;
  }

  const uint64_t size = out.size();
  const uint64_t connections = static_cast<uint64_t>(
      std::max(options.connections > 0 ? options.connections : config.parallel_connections, 1));
  const uint64_t max_part = std::max<uint64_t>(config.part_bytes, kMinPartBytes);
  const uint64_t part_size =
      std::clamp<uint64_t>((size + connections - 1) / connections, kMinPartBytes, max_part);
  const uint64_t count = (size + part_size - 1) / part_size;
  std::vector<Part> parts(count);
  for (uint64_t i = 0; i < count; ++i) {
    parts[i].state = &st;
    parts[i].start = i * part_size;
    parts[i].next = parts[i].start;
    parts[i].end = std::min(size, parts[i].start + part_size);
    if (i == 0 && !st.resolved) parts[i].url = url;
  }
  CURLM* multi = TakeMulti();
  if (multi == nullptr) return absl::ResourceExhaustedError("curl_multi_init failed");
  absl::Status s = RunParts(multi, st, parts, static_cast<size_t>(std::min(connections, count)));
  // Whatever happened, no transfer writes `out` after this.
  for (Part& p : parts) {
    if (p.easy != nullptr) {
      curl_multi_remove_handle(multi, p.easy);
      GiveEasy(p.easy);
      p.easy = nullptr;
    }
    if (p.header_list != nullptr) {
      FreeHeaders(p.header_list);
      p.header_list = nullptr;
    }
  }
  GiveMulti(multi);
  if (s.ok() && st.redirected && st.final_url != url) RememberFinalUrl(url, st.final_url);
  return s;
}

absl::Status HttpClient::Impl::RunParts(CURLM* multi, GetRangeState& st, std::vector<Part>& parts,
                                        size_t concurrency) {
  std::deque<size_t> pending;
  for (size_t i = 0; i < parts.size(); ++i) pending.push_back(i);
  size_t active = 0;
  size_t done = 0;

  auto start = [&](size_t index) -> absl::Status {
    Part& p = parts[index];
    p.transfer = Transfer();
    p.transfer.part = &p;
    p.validated = false;
    if (p.url.empty()) p.url = st.final_url;
    CURL* e = TakeEasy();
    if (e == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
    p.easy = e;
    CommonOptions(e, &p.transfer);
    curl_easy_setopt(e, CURLOPT_URL, p.url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &PartBodyCallback);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &p.transfer);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &p);
    bool authorized = false;
    std::vector<HttpHeader> extra = {
        {"Range", absl::StrCat("bytes=", st.offset + p.next, "-", st.offset + p.end - 1)},
        {"Accept-Encoding", "identity"}};
    p.header_list = BuildHeaders(extra, p.url, true, false, &authorized);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, p.header_list);
    stats.requests.fetch_add(1, std::memory_order_relaxed);
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
      return absl::InternalError("curl_multi_add_handle failed");
    }
    ++active;
    return absl::OkStatus();
  };

  while (done < parts.size()) {
    if (st.cancel != nullptr && st.cancel->load(std::memory_order_relaxed)) {
      return absl::CancelledError(absl::StrCat("GET ", SafeUrl(st.original_url), ": cancelled"));
    }
    // Start what may start: only part 0 until the redirects are behind us
    // (the others then go straight to the final URL).
    const Clock::time_point now = Clock::now();
    for (auto it = pending.begin(); it != pending.end() && active < concurrency;) {
      if (!st.resolved && active > 0) break;
      Part& p = parts[*it];
      if (p.next >= p.end) {  // the whole object came in one 200
        ++done;
        it = pending.erase(it);
        continue;
      }
      if (p.not_before > now) {
        ++it;
        if (!st.resolved) break;
        continue;
      }
      size_t index = *it;
      it = pending.erase(it);
      absl::Status s = start(index);
      if (!s.ok()) return s;
      if (!st.resolved) break;
    }
    if (done >= parts.size()) break;

    int running = 0;
    CURLMcode mc = curl_multi_perform(multi, &running);
    if (mc != CURLM_OK) {
      return absl::InternalError(absl::StrCat("curl_multi_perform: ", curl_multi_strerror(mc)));
    }
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Part* p = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&p));
      const CURLcode code = p->transfer.stalled ? CURLE_OPERATION_TIMEDOUT : msg->data.result;
      curl_multi_remove_handle(multi, p->easy);
      long status = 0;
      curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
      if (status != 0) p->transfer.status = status;
      GiveEasy(p->easy);
      p->easy = nullptr;
      FreeHeaders(p->header_list);
      p->header_list = nullptr;
      --active;
      const size_t index = static_cast<size_t>(p - parts.data());
      absl::Status s = FinishPart(*p, code, pending, index);
      if (!s.ok()) return s;
      if (p->next >= p->end && p->validated) ++done;
    }
    if (done >= parts.size()) break;
    // A whole-object 200: the other parts are covered.
    if (st.whole_object) {
      for (auto it = pending.begin(); it != pending.end();) {
        if (parts[*it].start >= parts[0].start && parts[*it].end <= parts[0].end && *it != 0) {
          ++done;
          it = pending.erase(it);
        } else {
          ++it;
        }
      }
      st.whole_object = false;
    }
    // Wait for data, or until a pending part may start (it may at once
    // when a retry has no delay).
    int64_t timeout_ms = 200;
    if (!pending.empty() && active < concurrency && (st.resolved || active == 0)) {
      const Clock::time_point ready = parts[pending.front()].not_before;
      Clock::time_point soonest = ready;
      if (st.resolved) {
        for (size_t index : pending) soonest = std::min(soonest, parts[index].not_before);
      }
      timeout_ms = std::clamp<int64_t>(
          std::chrono::duration_cast<milliseconds>(soonest - Clock::now()).count(), 0, 200);
    }
    if (timeout_ms > 0) {
      if (active > 0) {
        curl_multi_poll(multi, nullptr, 0, static_cast<int>(timeout_ms), nullptr);
      } else {
        std::this_thread::sleep_for(milliseconds(timeout_ms));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status HttpClient::Impl::FinishPart(Part& p, CURLcode code, std::deque<size_t>& pending,
                                          size_t index) {
  Transfer& t = p.transfer;
  GetRangeState& st = *p.state;
  const std::string what = absl::StrCat("GET ", SafeUrl(p.url));
  if (!t.abort.ok()) return t.abort;
  if (t.headers_too_big) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": the answer's headers exceed ", kMaxHeaderBytes, " bytes"));
  }
  auto retry = [&](std::optional<milliseconds> delay, absl::string_view why) -> absl::Status {
    if (p.retries >= config.max_retries) {
      return absl::UnavailableError(absl::StrCat(what, ": ", why, " (bytes ", st.offset + p.next,
                                                 "-", st.offset + p.end - 1, ", after ", p.retries,
                                                 " retries)"));
    }
    milliseconds d = delay ? *delay : Backoff(config, p.retries);
    ++p.retries;
    stats.retries.fetch_add(1, std::memory_order_relaxed);
    p.not_before = Clock::now() + d;
    pending.push_front(index);
    return absl::OkStatus();
  };

  const long status = t.status;
  if (status >= 200 && status <= 299) {
    if (p.next >= p.end) {
      // All of it, even if the connection then broke (a wrong Content-Length).
      if (!p.validated) p.validated = true;
      return absl::OkStatus();
    }
    if (code == CURLE_OK || RetryableCurl(code)) {
      // Short or dropped: resume from the last byte written.
      p.validated = false;
      return retry(std::nullopt, code == CURLE_OK
                                     ? std::string("the answer ended early")
                                     : absl::StrCat(curl_easy_strerror(code), Detail(t)));
    }
    return absl::UnavailableError(absl::StrCat(what, ": ", curl_easy_strerror(code)));
  }
  if (status == 0 || code != CURLE_OK) {
    // No answer, or one cut before its body was read.
    if (code != CURLE_OK && !RetryableCurl(code)) {
      return absl::UnavailableError(absl::StrCat(what, ": network failure talking to ",
                                                 HostOf(p.url), ": ", curl_easy_strerror(code),
                                                 Detail(t)));
    }
    if (status == 0 || RetryableStatus(status)) {
      return retry(std::nullopt, absl::StrCat("network failure talking to ", HostOf(p.url), ": ",
                                              curl_easy_strerror(code), Detail(t)));
    }
  }
  const bool redirect =
      status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
  if (redirect) {
    const std::string* location = t.Header("location");
    if (location == nullptr) {
      return absl::UnavailableError(absl::StrCat(what, ": redirect ", status, " without Location"));
    }
    if (p.hops >= kMaxRedirects) {
      return absl::FailedPreconditionError(absl::StrCat("GET ", SafeUrl(st.original_url),
                                                        ": more than ", kMaxRedirects,
                                                        " redirects"));
    }
    absl::StatusOr<std::string> next = ResolveLocation(p.url, *location);
    if (!next.ok()) return next.status();
    p.url = std::move(*next);
    ++p.hops;
    p.not_before = Clock::now();
    pending.push_front(index);
    return absl::OkStatus();
  }
  if (RetryableStatus(status)) {
    std::optional<milliseconds> after = ParseRetryAfter(t.Header("retry-after"));
    if (after && *after > config.max_retry_after) {
      HttpResponse r;
      r.status = status;
      r.url = p.url;
      r.headers = std::move(t.headers);
      return HttpError(r, absl::StrCat(what, " (Retry-After beyond the ",
                                       config.max_retry_after.count(), " ms allowed)"));
    }
    return retry(after, absl::StrCat("HTTP ", status));
  }
  // A CDN's URL that expired or was refused: once, resolve again from the
  // original URL (the Hub signs a new one).
  std::optional<Origin> here = ParseOrigin(p.url);
  std::optional<Origin> original = ParseOrigin(st.original_url);
  if ((status == 401 || status == 403 || status == 404 || status == 410) && here && original &&
      !(*here == *original)) {
    if (st.cached_final) ForgetFinalUrl(st.original_url);
    if (!p.reresolved) {
      // Not a retry: the URL, not the transfer, failed.
      p.reresolved = true;
      p.url = st.original_url;
      p.hops = 0;
      p.not_before = Clock::now();
      pending.push_front(index);
      return absl::OkStatus();
    }
  }
  HttpResponse r;
  r.status = status;
  r.url = p.url;
  r.headers = std::move(t.headers);
  r.body = std::move(t.body);
  r.authorized = MayAuthorize(p.url);
  if (!config.token.empty()) {
    for (HttpHeader& h : r.headers) h.value = Scrub(std::move(h.value));
  }
  return HttpError(r, what);
}

// ---------------------------------------------------------------- errors

absl::Status HttpError(const HttpResponse& response, absl::string_view what) {
  const long status = response.status;
  if (status >= 200 && status <= 299) return absl::OkStatus();
  std::string hub_message;
  if (const std::string* m = response.Header("x-error-message")) {
    hub_message = absl::StrCat(": ", EscapeForLog(*m));
  }
  std::string error_code;
  if (const std::string* c = response.Header("x-error-code")) error_code = *c;
  const std::string where = response.url.empty() ? std::string() : absl::StrCat(" (", SafeUrl(response.url), ")");
  auto msg = [&](absl::string_view summary) {
    return absl::StrCat(what, ": HTTP ", status, " ", summary, hub_message, where);
  };
  switch (status) {
    case 401:
      if (response.authorized) {
        return absl::UnauthenticatedError(
            msg("the token was refused (invalid or expired; or the repo does not exist or is "
                "private to others)"));
      }
      return absl::UnauthenticatedError(
          msg("needs a token (the repo is private, or does not exist): set HF_TOKEN or log in "
              "with `hf auth login`"));
    case 403:
      if (error_code == "GatedRepo") {
        return absl::PermissionDeniedError(
            msg("the repo is gated: request access on its page on the Hub, then use a token of "
                "the account that was granted access"));
      }
      return absl::PermissionDeniedError(msg("forbidden: the token lacks the permission"));
    case 404:
      if (error_code == "RepoNotFound") return absl::NotFoundError(msg("repository not found"));
      if (error_code == "RevisionNotFound") return absl::NotFoundError(msg("revision not found"));
      if (error_code == "EntryNotFound") return absl::NotFoundError(msg("file not found"));
      return absl::NotFoundError(msg("not found"));
    case 416:
      return absl::OutOfRangeError(msg("range not satisfiable"));
    case 429: {
      std::string after;
      if (const std::string* ra = response.Header("retry-after")) {
        after = absl::StrCat(" (Retry-After: ", EscapeForLog(*ra, 64), ")");
      }
      return absl::ResourceExhaustedError(absl::StrCat(msg("too many requests"), after));
    }
    default:
      break;
  }
  if (status >= 500 && status <= 599) return absl::UnavailableError(msg("server error"));
  if (status >= 400 && status <= 499) return absl::InvalidArgumentError(msg("request refused"));
  if (status >= 300 && status <= 399) {
    return absl::FailedPreconditionError(msg("unexpected redirect"));
  }
  return absl::UnknownError(msg("unexpected status"));
}

}  // namespace bigsmall::hub
