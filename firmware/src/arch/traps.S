/* Exception entry stubs: one per vector 0..31. Vectors without a CPU error code push a 0 so
 * that every frame has the same shape; then the vector; then trap_common saves the general
 * registers and calls exception(&frame), which never returns. */

    .macro STUB vector, has_error
    .p2align 4
trap_stub_\vector:
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\vector
    jmp trap_common
    .endm

    .section .text.traps, "ax"
    .code64
    STUB 0, 0
    STUB 1, 0
    STUB 2, 0
    STUB 3, 0
    STUB 4, 0
    STUB 5, 0
    STUB 6, 0
    STUB 7, 0
    STUB 8, 1
    STUB 9, 0
    STUB 10, 1
    STUB 11, 1
    STUB 12, 1
    STUB 13, 1
    STUB 14, 1
    STUB 15, 0
    STUB 16, 0
    STUB 17, 1
    STUB 18, 0
    STUB 19, 0
    STUB 20, 0
    STUB 21, 1
    STUB 22, 0
    STUB 23, 0
    STUB 24, 0
    STUB 25, 0
    STUB 26, 0
    STUB 27, 0
    STUB 28, 0
    STUB 29, 1
    STUB 30, 1
    STUB 31, 0

/* The TSM's own timer interrupt (the preemption timer of a TD's run, vector 32): end it at the
 * local APIC (xAPIC EOI register, identity-mapped uncached) and return. The TSM runs with
 * interrupts off but for the moment it takes the ones pending (`arch::accept_pending_interrupts`). */
    .p2align 4
    .global preempt_stub
preempt_stub:
    push %rax
    movabsq $0xFEE000B0, %rax
    movl $0, (%rax)
    pop %rax
    iretq

trap_common:
    cld
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi              /* exception(&TrapFrame) */
    and $-16, %rsp              /* the ABI's call alignment */
    call exception
1:  hlt
    jmp 1b

    .section .rodata.traps, "a"
    .p2align 3
    .global trap_stub_table
trap_stub_table:
    .quad trap_stub_0, trap_stub_1, trap_stub_2, trap_stub_3
    .quad trap_stub_4, trap_stub_5, trap_stub_6, trap_stub_7
    .quad trap_stub_8, trap_stub_9, trap_stub_10, trap_stub_11
    .quad trap_stub_12, trap_stub_13, trap_stub_14, trap_stub_15
    .quad trap_stub_16, trap_stub_17, trap_stub_18, trap_stub_19
    .quad trap_stub_20, trap_stub_21, trap_stub_22, trap_stub_23
    .quad trap_stub_24, trap_stub_25, trap_stub_26, trap_stub_27
    .quad trap_stub_28, trap_stub_29, trap_stub_30, trap_stub_31
