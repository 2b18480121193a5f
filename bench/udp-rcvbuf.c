/* LD_PRELOAD shim for load generators that have no option for their socket receive
 * buffer (perfdhcp): every datagram socket they open gets SO_RCVBUFFORCE of
 * $BENCH_RCVBUF bytes before its first packet, so replies lost on the generator's own
 * full queue are not blamed on the server. Built by the bench harness at run time. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
    static int (*real_socket)(int, int, int);
    if (!real_socket)
        real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int fd = real_socket(domain, type, protocol);
    const char *size_text = getenv("BENCH_RCVBUF");
    if (fd >= 0 && (type & 0xf) == SOCK_DGRAM && size_text) {
        int size = atoi(size_text);
        /* Best effort: without CAP_NET_ADMIN the socket keeps its default size. */
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    }
    return fd;
}
