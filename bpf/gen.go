package bpf

// The BPF object is compiled from probe.bpf.c with clang and committed with its Go
// bindings, so building sidekey needs no clang. vmlinux.h is committed too; regenerate it
// only when moving to a newer kernel's BTF:
//
//	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

//go:generate go tool bpf2go -target bpfel -type event -type allow_key -type watch -type rl_key -type rl_val probe probe.bpf.c -- -O2 -Wall -Werror -I.
