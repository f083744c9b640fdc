// Happens-before edges that gRPC provides but ThreadSanitizer cannot see:
// Debian's gRPC is not built with -fsanitize=thread, so when it hands a call
// (and our reactor) from the thread that created it to the one that runs its
// callbacks, TSan sees two unordered accesses to our object. Marking the
// hand-off makes TSan see what gRPC guarantees, instead of suppressing
// reports in our code:
//   reactor = new Reactor(...); BIGSMALL_TSAN_RELEASE(reactor); return reactor;
//   void OnReadDone(bool ok) override { BIGSMALL_TSAN_ACQUIRE(this); ... }
//   (and before every StartWrite/StartRead/Finish: BIGSMALL_TSAN_RELEASE(this))
// No-ops unless built with -fsanitize=thread (BIGSMALL_TSAN=ON).
#ifndef BIGSMALL_DAEMON_TSAN_ANNOTATIONS_H_
#define BIGSMALL_DAEMON_TSAN_ANNOTATIONS_H_

#if defined(__SANITIZE_THREAD__)
#define BIGSMALL_HAVE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BIGSMALL_HAVE_TSAN 1
#endif
#endif

#if defined(BIGSMALL_HAVE_TSAN)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define BIGSMALL_TSAN_ACQUIRE(p) __tsan_acquire(static_cast<void*>(p))
#define BIGSMALL_TSAN_RELEASE(p) __tsan_release(static_cast<void*>(p))
#else
#define BIGSMALL_TSAN_ACQUIRE(p) static_cast<void>(p)
#define BIGSMALL_TSAN_RELEASE(p) static_cast<void>(p)
#endif

#endif  // BIGSMALL_DAEMON_TSAN_ANNOTATIONS_H_
