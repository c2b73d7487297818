// mount-nfs SERVER:/PATH DIR [OPTIONS]: mounts an NFS export with the
// kernel's own client, passing OPTIONS to mount(2) as the kernel's text
// options (nfs(5): vers=3,proto=tcp,nolock,... or vers=4.0). Busybox's mount
// has no NFS support, and the kernel parses these options itself: only
// addr= must be given, since the kernel resolves no host names. It is added
// from SERVER when OPTIONS has none (SERVER must then be an IPv4 address).
//
// Built static by build-initramfs.sh into the guest's nfs.cpio.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: mount-nfs SERVER:/PATH DIR [OPTIONS]\n");
    return 2;
  }
  const char* source = argv[1];
  const char* dir = argv[2];
  const char* options = argc == 4 ? argv[3] : "";
  const char* colon = strchr(source, ':');
  if (colon == NULL || colon == source || colon[1] != '/') {
    fprintf(stderr, "mount-nfs: the source must be SERVER:/PATH, not %s\n", source);
    return 2;
  }
  char data[4096];
  int n;
  if (strstr(options, "addr=") != NULL) {
    n = snprintf(data, sizeof data, "%s", options);
  } else {
    n = snprintf(data, sizeof data, "%s%saddr=%.*s", options, *options ? "," : "",
                 (int)(colon - source), source);
  }
  if (n < 0 || (size_t)n >= sizeof data) {
    fprintf(stderr, "mount-nfs: options longer than %zu bytes\n", sizeof data - 1);
    return 2;
  }
  if (mount(source, dir, "nfs", 0, data) != 0) {
    fprintf(stderr, "mount-nfs: mount -t nfs -o %s %s %s: %s\n", data, source, dir,
            strerror(errno));
    return 1;
  }
  return 0;
}
