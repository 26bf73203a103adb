/*
 * fdpass.c -- passing a descriptor over a connected Unix socket (SCM_RIGHTS): how a memfd
 * segment reaches another process. One descriptor per message; see ndshm_send_fd in ndshm.h.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

int ndshm_send_fd(int sock, int fd) {
    if (sock < 0 || fd < 0) return ndshm__fail(NDSHM_EINVAL, 0, "send_fd: socket %d or descriptor %d is invalid", sock, fd);
    char byte = 'F';
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    for (;;) {
        if (sendmsg(sock, &msg, MSG_NOSIGNAL) == 1) return 0;
        if (errno != EINTR) return ndshm__fail_errno(errno, "cannot send descriptor %d over socket %d", fd, sock);
    }
}

/* Room for this many descriptors in one message: a peer may send several in one sendmsg. We
 * keep the first and close the others; if even this overflows (MSG_CTRUNC: the kernel drops
 * what does not fit), we close what arrived and fail rather than hand out a partial message. */
#define RECV_FD_MAX 16

int ndshm_recv_fd(int sock, int *fd) {
    if (fd == NULL || sock < 0) return ndshm__fail(NDSHM_EINVAL, 0, "recv_fd: socket %d or out is invalid", sock);
    *fd = -1;
    char byte;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(RECV_FD_MAX * sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return ndshm__fail_errno(errno, "cannot receive a descriptor from socket %d", sock);
    int first = -1, extra = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < count; k++) {
            int got;
            memcpy(&got, CMSG_DATA(c) + k * sizeof(int), sizeof got);
            if (got < 0) continue;
            if (first < 0) first = got;
            else {
                close(got);
                extra++;
            }
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        if (first >= 0) close(first);
        return ndshm__fail(NDSHM_ESYS, 0,
                           "message on socket %d carried more control data than room for %d descriptors "
                           "(MSG_CTRUNC); closed the %d descriptors that arrived",
                           sock, RECV_FD_MAX, (first >= 0) + extra);
    }
    if (first < 0) {
        if (n == 0) return ndshm__fail(NDSHM_ESYS, 0, "socket %d closed before a descriptor arrived", sock);
        return ndshm__fail(NDSHM_ESYS, 0, "message on socket %d carried no descriptor", sock);
    }
    *fd = first; /* any others (`extra`) were closed: one descriptor per message is the protocol */
    return 0;
}
