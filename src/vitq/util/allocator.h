// Process-wide memory allocator settings for programs that run whole networks (the CLI, the tests).
#pragma once

namespace vitq {

// Keeps freed memory in glibc's heap for reuse instead of returning it to the system. Activations are large
// (a [32,197,768] float tensor is 19 MB): with glibc's defaults each one is a fresh mmap, returned on free, so
// every op pays page faults again — DeiT-Tiny batch 32: 1016 ms vs 680 ms per batch; the OMSE observer on two
// images, 38 s vs 2.5 s on this project's 2-core VMs, where a page fault is expensive. Process-wide, so a
// library never calls it by itself: programs do, first thing in main().
void keep_freed_memory();

// Bytes this process can still get: the system's MemAvailable (/proc/meminfo) plus what glibc's heap holds free
// for reuse (kept by keep_freed_memory). 0 when /proc/meminfo cannot be read (not Linux).
double available_memory_bytes();

}  // namespace vitq
