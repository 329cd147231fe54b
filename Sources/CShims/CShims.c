#define _GNU_SOURCE
#include "CShims.h"
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stddef.h>
#include <stdio.h>
#include <seccomp.h>
#include <spawn.h>
#include <errno.h>
#include <netdb.h>
#include <resolv.h>
#include <netinet/in.h>
#include <arpa/inet.h>

struct cmsghdr *CShims_CMSG_FIRSTHDR(const struct msghdr *msg) { return CMSG_FIRSTHDR(msg); }
struct cmsghdr *CShims_CMSG_NXTHDR(struct msghdr *msg, struct cmsghdr *cmsg) { return CMSG_NXTHDR(msg, cmsg); }
unsigned char *CShims_CMSG_DATA(struct cmsghdr *cmsg) { return CMSG_DATA(cmsg); }
size_t CShims_CMSG_SPACE(size_t length) { return CMSG_SPACE(length); }
size_t CShims_CMSG_LEN(size_t length) { return CMSG_LEN(length); }

int CShims_prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5) {
    return prctl(option, arg2, arg3, arg4, arg5);
}
int CShims_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int CShims_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }
long CShims_forbidden_syscall(void) { return syscall(SYS_vhangup); }
long CShims_fault_clone_newuser(void) { return syscall(SYS_clone, CLONE_NEWUSER | CLONE_THREAD | CLONE_SIGHAND | CLONE_VM, 0, 0, 0, 0); }
long CShims_fault_netlink_socket(void) { return syscall(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0); }
long CShims_fault_signal_parent(void) { pid_t parent = getppid(); return syscall(SYS_tgkill, parent, parent, 0); }
long CShims_fault_socket(int domain, int type, int protocol) { return syscall(SYS_socket, domain, type | SOCK_CLOEXEC, protocol); }
long CShims_fault_setns(void) { return syscall(SYS_setns, -1, CLONE_NEWNET); }
long CShims_fault_unshare(void) { return syscall(SYS_unshare, CLONE_NEWNET); }
long CShims_fault_ptrace_parent(void) { return syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, getppid(), 0, 0); }
static struct sockaddr_in loopback(unsigned short port) {
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = { htonl(INADDR_LOOPBACK) } };
    return address;
}
long CShims_fault_bind(unsigned short port) {
    long fd = syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fd;
    struct sockaddr_in address = loopback(port);
    long rc = syscall(SYS_bind, fd, &address, sizeof address);
    int saved = errno;
    close((int)fd);
    errno = saved;
    return rc;
}
long CShims_fault_bind_abstract(unsigned short tag, int *kept) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return -1;
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    int length = snprintf(address.sun_path + 1, sizeof address.sun_path - 1, "ztunnel-wall-probe-%u", (unsigned)tag);
    long rc = syscall(SYS_bind, pair[0], &address, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + length));
    int saved = errno;
    if (rc == 0) { kept[0] = pair[0]; kept[1] = pair[1]; } else { close(pair[0]); close(pair[1]); }
    errno = saved;
    return rc;
}
long CShims_fault_sendto_loopback(int fd, unsigned short port, const void *bytes, size_t length) {
    struct sockaddr_in address = loopback(port);
    return syscall(SYS_sendto, fd, bytes, length, 0, &address, sizeof address);
}
int CShims_close_range(unsigned int first, unsigned int last) { return (int)syscall(SYS_close_range, first, last, 0); }

int CShims_seccomp_rule_add_conditions(void *ctx, uint32_t action, int syscall, uint32_t count,
                                       const uint32_t *indexes, const uint32_t *ops,
                                       const uint64_t *values, const uint64_t *values_two) {
    struct scmp_arg_cmp conditions[6];
    if (count > 6) return -EINVAL;
    for (uint32_t i = 0; i < count; i++) {
        conditions[i].arg = indexes[i];
        conditions[i].op = (enum scmp_compare)ops[i];
        conditions[i].datum_a = values[i];
        conditions[i].datum_b = values_two[i];
    }
    return seccomp_rule_add_array((scmp_filter_ctx)ctx, action, syscall, count, conditions);
}
uint32_t CShims_SCMP_ACT_ERRNO(uint16_t errnum) { return SCMP_ACT_ERRNO(errnum); }

int CShims_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }
int CShims_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
int CShims_spawn_addclosefrom(void *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, from);
}

void CShims_resolver_warm_up(void) {
    struct addrinfo *result = NULL;
    (void)res_init();
    if (getaddrinfo("localhost", NULL, NULL, &result) == 0) freeaddrinfo(result);
}

int CShims_memfd_create(const char *name, unsigned int flags) { return (int)syscall(SYS_memfd_create, name, flags); }

unsigned long long CShims_atomic_load_u64(const unsigned long long *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
void CShims_atomic_store_u64(unsigned long long *p, unsigned long long value) { __atomic_store_n(p, value, __ATOMIC_SEQ_CST); }
void CShims_atomic_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

int CShims_socketpair(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds);
}
