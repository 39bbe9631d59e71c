/* The host agent's first instructions and its exception entry.
 *
 * The TSM enters host_entry in 64-bit mode (its entry contract, docs/firmware.md): CS 0x08,
 * data selectors 0x10 (hidden state only: no GDT yet), paging on with its page tables, RDI =
 * the boot information's physical address, interrupts off. The agent loads its own GDT with
 * the same selectors, reloads them, takes its own stack and calls host_main(boot_info).
 *
 * Exceptions: 32 stubs push a zero error code where the CPU pushes none (and where the TSM
 * injects one: #MC and #UD carry none), then the vector, and go to host_trap_common, which
 * saves the GPRs and calls host_trap(frame) (arch/mod.rs); returning resumes with iretq.
 *
 * The probe routines make one access each that the TSM must refuse; the #MC (or #UD) handler
 * moves RIP to the routine's fixup and sets RDX = 1, so they return (value, faulted). */

    .section .text.entry, "ax"
    .global host_entry
host_entry:
    cli
    lea rsp, [rip + host_stack_top]
    mov rbx, rdi
    lgdt [rip + host_gdtr]
    lea rax, [rip + 1f]
    push 0x08
    push rax
    retfq
1:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rdi, rbx
    call host_main
2:  hlt
    jmp 2b

    .section .text
/* u64 value, u64 faulted = host_probe_read(addr) */
    .global host_probe_read, host_probe_read_at, host_probe_read_fixup
host_probe_read:
    xor eax, eax
    xor edx, edx
host_probe_read_at:
    mov rax, [rdi]
host_probe_read_fixup:
    ret

/* u64 0, u64 faulted = host_probe_write(addr, value) */
    .global host_probe_write, host_probe_write_at, host_probe_write_fixup
host_probe_write:
    xor eax, eax
    xor edx, edx
host_probe_write_at:
    mov [rdi], rsi
host_probe_write_fixup:
    ret

/* u64 0, u64 refused = host_probe_tdcall(): TDCALL from the host world (RAX = 1, TDG.VP.INFO).
 * Were it ever served, it could write R12..R15: they are kept. */
    .global host_probe_tdcall, host_probe_tdcall_at, host_probe_tdcall_fixup
host_probe_tdcall:
    push r12
    push r13
    push r14
    push r15
    mov eax, 1
    xor edx, edx
host_probe_tdcall_at:
    .byte 0x66, 0x0f, 0x01, 0xcc
host_probe_tdcall_fixup:
    pop r15
    pop r14
    pop r13
    pop r12
    xor eax, eax
    ret

    .section .data
    .balign 16
host_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
host_gdtr:
    .word 3 * 8 - 1
    .quad host_gdt

    .section .bss
    .balign 4096
host_stack:
    .skip 512 * 1024
host_stack_top:
