// Landlock (Documentation/userspace-api/landlock.rst) wrappers: glibc has none, and Debian 12's
// <linux/landlock.h> predates the network rules and scopes. The kernel structs live only in
// CShimsLandlock.c, so Swift never sees a layout that grew between ABI versions. Nothing here
// chooses which rights to handle: that is Shared/Landlock.swift's job.
#ifndef CSHIMS_LANDLOCK_H
#define CSHIMS_LANDLOCK_H

#include <stdint.h>

// Filesystem access rights (handled_access_fs). ABI 1: bits 0..12.
static const uint64_t CShims_LANDLOCK_ACCESS_FS_EXECUTE = 1ULL << 0;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_WRITE_FILE = 1ULL << 1;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_READ_FILE = 1ULL << 2;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_READ_DIR = 1ULL << 3;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_REMOVE_DIR = 1ULL << 4;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_REMOVE_FILE = 1ULL << 5;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_CHAR = 1ULL << 6;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_DIR = 1ULL << 7;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_REG = 1ULL << 8;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_SOCK = 1ULL << 9;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_FIFO = 1ULL << 10;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1ULL << 11;
static const uint64_t CShims_LANDLOCK_ACCESS_FS_MAKE_SYM = 1ULL << 12;
/// ABI 2.
static const uint64_t CShims_LANDLOCK_ACCESS_FS_REFER = 1ULL << 13;
/// ABI 3.
static const uint64_t CShims_LANDLOCK_ACCESS_FS_TRUNCATE = 1ULL << 14;
/// ABI 5.
static const uint64_t CShims_LANDLOCK_ACCESS_FS_IOCTL_DEV = 1ULL << 15;

// Network access rights (handled_access_net, rule allowed_access), ABI 4. TCP only.
static const uint64_t CShims_LANDLOCK_ACCESS_NET_BIND_TCP = 1ULL << 0;
static const uint64_t CShims_LANDLOCK_ACCESS_NET_CONNECT_TCP = 1ULL << 1;

// Scopes (scoped), ABI 6.
static const uint64_t CShims_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1ULL << 0;
static const uint64_t CShims_LANDLOCK_SCOPE_SIGNAL = 1ULL << 1;

/// landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the kernel's highest ABI
/// version, or -1 with errno (ENOSYS: not built in; EOPNOTSUPP: disabled at boot).
int CShims_landlock_abi_version(void);

/// Fills a kernel `struct landlock_ruleset_attr` from the three masks and calls
/// landlock_create_ruleset(2) with the size that covers the last non-zero field (8, 16 or 24
/// bytes), so an older kernel is not handed fields it does not know. Returns the ruleset fd
/// (close-on-exec) or -1 with errno.
int CShims_landlock_create_ruleset(uint64_t handled_access_fs, uint64_t handled_access_net, uint64_t scoped);

/// landlock_add_rule(2) with a LANDLOCK_RULE_NET_PORT rule (`struct landlock_net_port_attr`).
/// Returns 0, or -1 with errno.
int CShims_landlock_add_rule_net_port(int ruleset_fd, uint64_t allowed_access, uint64_t port);

/// landlock_restrict_self(2): confines the calling thread (only) to the ruleset. Returns 0, or -1
/// with errno.
int CShims_landlock_restrict_self(int ruleset_fd, uint32_t flags);

#endif
