{
  "targets": [
    {
      "target_name": "vrio_io",
      "sources": ["native/addon.cc", "native/channel.cc", "native/open.cc", "native/fallocate.cc", "native/extents.cc", "native/xts.cc", "native/aead.cc", "native/nowait.cc", "native/fuse.cc", "native/fuse_uring.cc", "native/dpi_scan.cc", "native/fastpath.cc", "native/gc_stats.cc", "native/malloc_tune.cc", "native/unix_listener.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "variables": {"ipsec_mb": "<!(test -f /usr/include/intel-ipsec-mb.h && echo 1 || echo 0)"},
      "conditions": [
        ["OS!='linux'", {"type": "none"}],
        ["ipsec_mb==1", {"defines": ["VRIO_IPSEC_MB"], "libraries": ["-lIPSec_MB"]}]
      ]
    }
  ]
}
