// SPDX-License-Identifier: Apache-2.0
//   tcp_server PORT
// A TCP server on 127.0.0.1:PORT (0: any free port); prints "listening P"
// with the port it got. It serves one connection at a time: for each line
// "req K" it answers "resp K served S\n", S counting the requests served on
// that connection (state in the server's memory), and prints "served K S".
// After a restore the same client connection goes on, and S with it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int WriteAll(int fd, const char* buf, size_t n) {
  while (n > 0) {
    ssize_t done = write(fd, buf, n);
    if (done <= 0) return -1;
    buf += done;
    n -= (size_t)done;
  }
  return 0;
}

// Answers the requests of one connection until it ends.
static void Serve(int conn) {
  char buf[4096];
  size_t have = 0;
  unsigned long served = 0;
  for (;;) {
    ssize_t got = read(conn, buf + have, sizeof buf - 1 - have);
    if (got <= 0) return;
    have += (size_t)got;
    buf[have] = '\0';
    char* line = buf;
    for (char* end; (end = strchr(line, '\n')) != NULL; line = end + 1) {
      *end = '\0';
      unsigned long k;
      if (sscanf(line, "req %lu", &k) != 1) continue;
      ++served;
      char answer[64];
      int len = snprintf(answer, sizeof answer, "resp %lu served %lu\n", k, served);
      if (WriteAll(conn, answer, (size_t)len) != 0) return;
      printf("served %lu %lu\n", k, served);
      fflush(stdout);
    }
    have -= (size_t)(line - buf);
    memmove(buf, line, have);
    if (have == sizeof buf - 1) have = 0;  // an endless line: drop it
  }
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int on = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (s < 0 || bind(s, (struct sockaddr*)&addr, sizeof addr) != 0 || listen(s, 4) != 0) {
    perror("tcp_server");
    return 1;
  }
  socklen_t len = sizeof addr;
  getsockname(s, (struct sockaddr*)&addr, &len);
  printf("listening %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  for (;;) {
    int conn = accept(s, NULL, NULL);
    if (conn < 0) continue;
    Serve(conn);
    close(conn);
  }
}
