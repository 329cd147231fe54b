// Sockets made inside another network namespace (in-pod mode, issue #9). setns(2) changes the
// network namespace of the calling thread only, and a socket keeps the namespace it was created
// in: so a short-lived thread enters the pod's namespace, creates the sockets and exits, and the
// Supervisor's own thread never leaves its namespace. Binding, options and listening happen
// afterwards, from any thread.
#define _GNU_SOURCE
#include "CShims.h"
#include <errno.h>
#include <linux/nsfs.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <unistd.h>

int CShims_netns_check(int fd) {
    // Only an nsfs file gets the ioctl: an fd of anything else (a socket, a device) from istio-cni
    // must not reach some driver's ioctl handler.
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -errno;
    if ((unsigned long)fs.f_type != 0x6e736673UL /* NSFS_MAGIC */) return -EINVAL;
    int type = ioctl(fd, NS_GET_NSTYPE);
    if (type < 0) return -errno;
    return type == CLONE_NEWNET ? 0 : -EINVAL;
}

struct netns_sockets {
    int nsfd, domain, type, count;
    int *fds;
    int made;
    int error;
};

static void *make_sockets(void *argument) {
    struct netns_sockets *job = argument;
    if (setns(job->nsfd, CLONE_NEWNET) != 0) {
        job->error = errno;
        return NULL;
    }
    for (int i = 0; i < job->count; i++) {
        int fd = socket(job->domain, job->type | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            job->error = errno;
            break;
        }
        job->fds[job->made++] = fd;
    }
    return NULL;
}

int CShims_sockets_in_netns(int nsfd, int domain, int type, int count, int *fds, int *error) {
    struct netns_sockets job = {nsfd, domain, type, count, fds, 0, 0};
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, make_sockets, &job);
    if (rc != 0) {
        *error = rc;
        return 0;
    }
    pthread_join(thread, NULL);
    *error = job.error;
    return job.made;
}
