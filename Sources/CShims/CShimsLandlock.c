// Landlock syscall wrappers. The UAPI below is written from the kernel's documented ABI
// (include/uapi/linux/landlock.h, Documentation/userspace-api/landlock.rst) rather than taken
// from <linux/landlock.h>, whose Debian 12 copy lacks the ABI 4 and ABI 6 fields.
#define _GNU_SOURCE
#include "CShimsLandlock.h"
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

// Since Linux 5.1 every architecture but alpha shares these numbers (the unified syscall table).
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#endif
#ifndef __NR_landlock_add_rule
#define __NR_landlock_add_rule 445
#endif
#ifndef __NR_landlock_restrict_self
#define __NR_landlock_restrict_self 446
#endif

#define CSHIMS_LANDLOCK_CREATE_RULESET_VERSION (1U << 0)
#define CSHIMS_LANDLOCK_RULE_NET_PORT 2

// struct landlock_ruleset_attr. It grew: handled_access_fs (ABI 1, 8 bytes), handled_access_net
// (ABI 4, 16 bytes), scoped (ABI 6, 24 bytes). The size passed tells the kernel which fields exist.
struct cshims_landlock_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

// struct landlock_net_port_attr (ABI 4): port in host byte order, at most 65535.
struct cshims_landlock_net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};

_Static_assert(sizeof(struct cshims_landlock_ruleset_attr) == 24, "landlock_ruleset_attr is 24 bytes at ABI 6");
_Static_assert(sizeof(struct cshims_landlock_net_port_attr) == 16, "landlock_net_port_attr is 16 bytes");

// Fills the attr and returns the size ending at the last non-zero field, so a kernel older than
// that field is not given it (the kernel accepts a shorter struct and treats the rest as zero).
static size_t cshims_landlock_fill_ruleset_attr(struct cshims_landlock_ruleset_attr *attr, uint64_t handled_access_fs,
                                                uint64_t handled_access_net, uint64_t scoped) {
    attr->handled_access_fs = handled_access_fs;
    attr->handled_access_net = handled_access_net;
    attr->scoped = scoped;
    if (scoped != 0) return offsetof(struct cshims_landlock_ruleset_attr, scoped) + sizeof(attr->scoped);
    if (handled_access_net != 0)
        return offsetof(struct cshims_landlock_ruleset_attr, handled_access_net) + sizeof(attr->handled_access_net);
    return offsetof(struct cshims_landlock_ruleset_attr, handled_access_fs) + sizeof(attr->handled_access_fs);
}

int CShims_landlock_abi_version(void) {
    return (int)syscall(__NR_landlock_create_ruleset, NULL, (size_t)0, CSHIMS_LANDLOCK_CREATE_RULESET_VERSION);
}

int CShims_landlock_create_ruleset(uint64_t handled_access_fs, uint64_t handled_access_net, uint64_t scoped) {
    struct cshims_landlock_ruleset_attr attr;
    size_t size = cshims_landlock_fill_ruleset_attr(&attr, handled_access_fs, handled_access_net, scoped);
    return (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0U);
}

int CShims_landlock_add_rule_net_port(int ruleset_fd, uint64_t allowed_access, uint64_t port) {
    struct cshims_landlock_net_port_attr attr = {.allowed_access = allowed_access, .port = port};
    return (int)syscall(__NR_landlock_add_rule, ruleset_fd, CSHIMS_LANDLOCK_RULE_NET_PORT, &attr, 0U);
}

int CShims_landlock_restrict_self(int ruleset_fd, uint32_t flags) {
    return (int)syscall(__NR_landlock_restrict_self, ruleset_fd, flags);
}
