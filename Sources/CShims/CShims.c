#define _GNU_SOURCE
#include "CShims.h"
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <seccomp.h>
#include <spawn.h>

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
int CShims_close_range(unsigned int first, unsigned int last) { return (int)syscall(SYS_close_range, first, last, 0); }

int CShims_seccomp_rule_add0(void *ctx, uint32_t action, int syscall) {
    return seccomp_rule_add((scmp_filter_ctx)ctx, action, syscall, 0);
}
uint32_t CShims_SCMP_ACT_ERRNO(uint16_t errnum) { return SCMP_ACT_ERRNO(errnum); }

int CShims_setresuid(uid_t uid) { return setresuid(uid, uid, uid); }
int CShims_setresgid(gid_t gid) { return setresgid(gid, gid, gid); }
int CShims_spawn_addclosefrom(void *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np((posix_spawn_file_actions_t *)actions, from);
}
