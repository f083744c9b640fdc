#include "hub/secret.h"

#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace bigsmall::hub {
namespace {

size_t PageSize() {
  long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<size_t>(page) : 4096;
}

}  // namespace

Secret::Secret(absl::string_view value) { Assign(value); }

Secret::Secret(const Secret& other) { Assign(other.Reveal()); }

Secret& Secret::operator=(const Secret& other) {
  if (this != &other) {
    Clear();
    Assign(other.Reveal());
  }
  return *this;
}

Secret::Secret(Secret&& other) noexcept
    : data_(other.data_), size_(other.size_), mapped_(other.mapped_) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.mapped_ = 0;
}

Secret& Secret::operator=(Secret&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = other.data_;
    size_ = other.size_;
    mapped_ = other.mapped_;
    other.data_ = nullptr;
    other.size_ = 0;
    other.mapped_ = 0;
  }
  return *this;
}

Secret::~Secret() { Clear(); }

std::string Secret::Describe() const {
  if (empty()) return "<none>";
  return absl::StrCat("<token, ", size_, " bytes>");
}

// The bytes get pages of their own: excluded from core dumps, locked in RAM
// where the limit allows (a token must not reach swap), zeroed before unmap.
// If mmap itself fails (address space exhausted), the Secret stays empty:
// callers then act anonymously, which the Hub answers with a clear 401.
void Secret::Assign(absl::string_view value) {
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
  if (value.empty()) return;
  const size_t page = PageSize();
  const size_t length = (value.size() + page - 1) / page * page;
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  (void)madvise(p, length, MADV_DONTDUMP);
  (void)mlock(p, length);  // best effort: RLIMIT_MEMLOCK may refuse
  std::memcpy(p, value.data(), value.size());
  data_ = static_cast<char*>(p);
  size_ = value.size();
  mapped_ = length;
}

void Secret::Clear() {
  if (data_ != nullptr) {
    explicit_bzero(data_, mapped_);
    (void)munlock(data_, mapped_);
    (void)munmap(data_, mapped_);
  }
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
}

bool DisableCoreDumps() {
  bool ok = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
  struct rlimit none = {0, 0};
  ok = (setrlimit(RLIMIT_CORE, &none) == 0) && ok;
  return ok;
}

}  // namespace bigsmall::hub
