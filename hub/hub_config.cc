#include "hub/hub_config.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/status_util.h"

namespace bigsmall::hub {
namespace {

// A token file is a line of text; anything bigger is not one.
constexpr size_t kMaxTokenFileBytes = 64 << 10;

// The variable's value, or nullptr when unset. An empty value counts as
// unset, as huggingface_hub's `os.environ.get(...) or default` treats it.
const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

std::string HomeDir() {
  if (const char* home = Env("HOME")) return home;
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* result = nullptr;
  if (getpwuid_r(getuid(), &pw, buf.data(), buf.size(), &result) == 0 && result != nullptr &&
      result->pw_dir != nullptr) {
    return result->pw_dir;
  }
  return "/";
}

// os.path.expanduser for the current user ("~" and "~/..." only).
std::string ExpandUser(const std::string& path) {
  if (path == "~") return HomeDir();
  if (absl::StartsWith(path, "~/")) return HomeDir() + path.substr(1);
  return path;
}

// os.path.expandvars: $NAME and ${NAME} replaced when NAME is set, left as
// they are otherwise.
std::string ExpandVars(const std::string& path) {
  if (path.find('$') == std::string::npos) return path;
  std::string out;
  size_t i = 0;
  auto is_name = [](char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  while (i < path.size()) {
    if (path[i] != '$') {
      out.push_back(path[i++]);
      continue;
    }
    size_t start = i + 1;
    size_t end = start;
    bool braced = start < path.size() && path[start] == '{';
    if (braced) {
      end = path.find('}', start + 1);
      if (end == std::string::npos) {
        out.append(path, i, std::string::npos);
        break;
      }
      std::string name = path.substr(start + 1, end - start - 1);
      const char* value = name.empty() ? nullptr : std::getenv(name.c_str());
      if (value != nullptr) {
        out.append(value);
      } else {
        out.append(path, i, end + 1 - i);
      }
      i = end + 1;
      continue;
    }
    while (end < path.size() && is_name(path[end])) ++end;
    if (end == start) {
      out.push_back('$');
      ++i;
      continue;
    }
    std::string name = path.substr(start, end - start);
    const char* value = std::getenv(name.c_str());
    if (value != nullptr) {
      out.append(value);
    } else {
      out.append(path, i, end - i);
    }
    i = end;
  }
  return out;
}

std::string ExpandPath(const std::string& path) { return ExpandVars(ExpandUser(path)); }

std::string JoinPath(const std::string& dir, absl::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// huggingface_hub's _clean_token: CR and LF removed, then whitespace trimmed.
std::string CleanToken(absl::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (char c : raw) {
    if (c != '\r' && c != '\n') out.push_back(c);
  }
  absl::string_view trimmed = absl::StripAsciiWhitespace(out);
  std::string result(trimmed);
  explicit_bzero(out.data(), out.size());
  return result;
}

// Python's str.upper() in {"1", "ON", "YES", "TRUE"}.
bool IsTrue(const char* value) {
  if (value == nullptr) return false;
  std::string upper = absl::AsciiStrToUpper(value);
  return upper == "1" || upper == "ON" || upper == "YES" || upper == "TRUE";
}

// The token file's content, cleaned; "" when the file does not exist.
absl::StatusOr<Secret> ReadTokenFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) return Secret();
    return ErrnoToStatus(err, absl::StrCat("token file ", EscapeForLog(path)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
    close(fd);
    return ErrnoToStatus(err != 0 ? err : EINVAL,
                         absl::StrCat("token file ", EscapeForLog(path)));
  }
  std::string raw(kMaxTokenFileBytes + 1, '\0');
  size_t got = 0;
  while (got < raw.size()) {
    ssize_t n = read(fd, raw.data() + got, raw.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      explicit_bzero(raw.data(), raw.size());
      return ErrnoToStatus(err, absl::StrCat("token file ", EscapeForLog(path)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  close(fd);
  if (got > kMaxTokenFileBytes) {
    explicit_bzero(raw.data(), raw.size());
    return absl::InvalidArgumentError(absl::StrCat("token file ", EscapeForLog(path),
                                                   " is larger than ", kMaxTokenFileBytes,
                                                   " bytes: not a token"));
  }
  std::string cleaned = CleanToken(absl::string_view(raw.data(), got));
  explicit_bzero(raw.data(), raw.size());
  Secret token(cleaned);
  explicit_bzero(cleaned.data(), cleaned.size());
  return token;
}

}  // namespace

absl::StatusOr<HubConfig> HubConfigFromEnvironment() {
  HubConfig config;

  // HF_ENDPOINT, as constants.py: the value with trailing '/' removed.
  if (const char* endpoint = Env("HF_ENDPOINT")) {
    std::string value = endpoint;
    while (!value.empty() && value.back() == '/') value.pop_back();
    absl::string_view rest;
    if (absl::StartsWithIgnoreCase(value, "https://")) {
      rest = absl::string_view(value).substr(8);
    } else if (absl::StartsWithIgnoreCase(value, "http://")) {
      rest = absl::string_view(value).substr(7);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("HF_ENDPOINT ", EscapeForLog(value), " is not an http:// or https:// URL"));
    }
    bool bad_char = false;
    for (char c : rest) {
      if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f || c == '?' || c == '#' || c == '@' ||
          c == '\\') {
        bad_char = true;
      }
    }
    if (rest.empty() || rest.front() == '/' || rest.front() == ':' || bad_char) {
      return absl::InvalidArgumentError(absl::StrCat(
          "HF_ENDPOINT ", EscapeForLog(value),
          " is not scheme://host[:port][/path] (no user info, query, fragment or spaces)"));
    }
    config.endpoint = value;
  }

  // HF_HOME: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
  std::string hf_home;
  if (const char* home = Env("HF_HOME")) {
    hf_home = ExpandPath(home);
  } else if (const char* xdg = Env("XDG_CACHE_HOME")) {
    hf_home = ExpandPath(JoinPath(xdg, "huggingface"));
  } else {
    hf_home = JoinPath(JoinPath(HomeDir(), ".cache"), "huggingface");
  }

  // HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub.
  if (const char* cache = Env("HF_HUB_CACHE")) {
    config.cache_dir = ExpandPath(cache);
  } else if (const char* legacy = Env("HUGGINGFACE_HUB_CACHE")) {
    config.cache_dir = ExpandPath(legacy);
  } else {
    config.cache_dir = JoinPath(hf_home, "hub");
  }

  // HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE when it is unset).
  const char* offline = Env("HF_HUB_OFFLINE");
  if (offline == nullptr) offline = Env("TRANSFORMERS_OFFLINE");
  config.offline = IsTrue(offline);

  // The token: HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, cleaned; an empty one
  // falls through to the token file (HF_TOKEN_PATH, else $HF_HOME/token).
  const char* env_token = Env("HF_TOKEN");
  if (env_token == nullptr) env_token = Env("HUGGING_FACE_HUB_TOKEN");
  if (env_token != nullptr) {
    std::string cleaned = CleanToken(env_token);
    config.token = Secret(cleaned);
    explicit_bzero(cleaned.data(), cleaned.size());
  }
  if (config.token.empty()) {
    std::string token_path;
    if (const char* path = Env("HF_TOKEN_PATH")) {
      token_path = ExpandPath(path);
    } else {
      token_path = JoinPath(hf_home, "token");
    }
    absl::StatusOr<Secret> token = ReadTokenFile(token_path);
    if (!token.ok()) return token.status();
    config.token = std::move(*token);
  }
  return config;
}

}  // namespace bigsmall::hub
