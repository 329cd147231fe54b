// One-line C helpers for macros and variadic functions that Swift cannot import.
// Nothing here holds state or makes decisions; see STYLE.md §1.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <poll.h>
#include <sys/random.h>  // getrandom: Glibc's Swift module does not export it

struct cmsghdr *CShims_CMSG_FIRSTHDR(const struct msghdr *msg);
struct cmsghdr *CShims_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg);
unsigned char *CShims_CMSG_DATA(struct cmsghdr *cmsg);
size_t CShims_CMSG_SPACE(size_t length);
size_t CShims_CMSG_LEN(size_t length);

/// prctl(2) is variadic in glibc.
int CShims_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
/// pidfd_open(2) has no glibc wrapper in Debian 12.
int CShims_pidfd_open(pid_t pid, unsigned int flags);
/// pidfd_send_signal(2) has no glibc wrapper in Debian 12.
int CShims_pidfd_send_signal(int pidfd, int sig);
/// vhangup(2), a syscall outside every worker allowlist: used only by the fault-injection hook that
/// proves the seccomp allowlist kills the process.
long CShims_forbidden_syscall(void);
/// Fault injection (tests only), each harmless should the filter ever let it through:
/// clone(2) with CLONE_NEWUSER (combined with CLONE_THREAD, which the kernel refuses: EINVAL);
long CShims_fault_clone_newuser(void);
/// socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) (a socket nobody uses);
long CShims_fault_netlink_socket(void);
/// tgkill(parent, parent, 0): signal 0 only checks that the target exists.
long CShims_fault_signal_parent(void);
/// socket(2) with these arguments (SOCK_CLOEXEC added): fault injection only.
long CShims_fault_socket(int domain, int type, int protocol);
/// setns(-1, CLONE_NEWNET), unshare(CLONE_NEWNET), ptrace(PTRACE_ATTACH, parent): fault injection only.
long CShims_fault_setns(void);
long CShims_fault_unshare(void);
long CShims_fault_ptrace_parent(void);
/// bind(2) of a fresh TCP socket to 127.0.0.1:port: fault injection only.
long CShims_fault_bind(unsigned short port);
/// Binds one end of a new AF_UNIX socketpair to the abstract name "ztunnel-wall-probe-<tag>"
/// (the fault probe `abstract-bind`); on success both ends stay open in `kept`.
long CShims_fault_bind_abstract(unsigned short tag, int *kept);
/// sendto(fd, bytes, length, 0, 127.0.0.1:port): the fault probe `dns-upstream-elsewhere`.
long CShims_fault_sendto_loopback(int fd, unsigned short port, const void *bytes, size_t length);
/// getdents64 on /proc/self/fd replacement: closes every fd >= lowfd (close_range(2)).
int CShims_close_range(unsigned int first, unsigned int last);

/// setresuid/setresgid need _GNU_SOURCE, which Swift's Glibc module does not define.
int CShims_setresuid(uid_t uid);
int CShims_setresgid(gid_t gid);
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34) needs _GNU_SOURCE.
int CShims_spawn_addclosefrom(void *actions, int from);

/// seccomp_rule_add_array(3) with the argument conditions as parallel arrays (at most 6), so
/// Swift need not build `struct scmp_arg_cmp`. Returns libseccomp's result (0 or -errno).
int CShims_seccomp_rule_add_conditions(void *ctx, uint32_t action, int syscall, uint32_t count,
                                       const uint32_t *indexes, const uint32_t *ops,
                                       const uint64_t *values, const uint64_t *values_two);
/// SCMP_ACT_ERRNO(x) is a function-like macro.
uint32_t CShims_SCMP_ACT_ERRNO(uint16_t errnum);

/// Makes glibc's resolver read its configuration (resolv.conf, nsswitch.conf, gai.conf) now:
/// once a worker is confined it can open no file, but glibc keeps what it read and only stats
/// resolv.conf afterwards.
void CShims_resolver_warm_up(void);
/* memfd_create(2) (glibc declares it only with _GNU_SOURCE). */
int CShims_memfd_create(const char *name, unsigned int flags);
/// A connected pair of anonymous AF_UNIX stream sockets, close-on-exec and non-blocking. 0 or -1
/// with errno.
int CShims_socketpair(int fds[2]);

/* Sequentially consistent 64-bit loads and stores on shared memory (the metrics regions'
   sequence counters). */
unsigned long long CShims_atomic_load_u64(const unsigned long long *p);
void CShims_atomic_store_u64(unsigned long long *p, unsigned long long value);
void CShims_atomic_fence(void);

#include "CShimsOpenSSL.h"
#include "CShimsLandlock.h"

// In-pod mode (CShimsNetns.c): whether fd is a network namespace (0, else -errno), and
// `count` sockets made inside it by a short-lived thread; returns how many were made (the first
// failure's errno in *error).
int CShims_netns_check(int fd);
int CShims_sockets_in_netns(int nsfd, int domain, int type, int count, int *fds, int *error);

#endif
