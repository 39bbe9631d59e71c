/* The host world's probe: a position-independent 64-bit program that the TSM copies into a host
 * page and runs as the SVM guest of the host world. It is data to the TSM (never executed in
 * host mode). It measures the bare exit floor (VMMCALL) and the SEAMCALL round trip
 * (TDH.SYS.INFO) in alternating rounds, then reads and writes every address of the target list; each access outside the host's nested
 * map becomes #MC in the host world, whose handler resumes at the fixup in R14 and counts in R15.
 *
 * In: RDI = parameter page: [0] iterations, [8..] target addresses, zero-terminated.
 * Then it executes TDCALL once (the TSM reflects #UD; the #UD handler counts it at [RDI + 0x808]
 * and skips the 4 bytes) and drains the TSM's host fault log with SEAMLESS.HOST.FAULT.RD.
 * VMMCALL RAX: 0 nothing, 1/2/3 phase marks (floor, seamcall, attacks), 4 done (R15 = #MCs
 * taken, RBP = fault-log entries read). */
        .section .rodata.host_probe, "a"
        .balign 16
        .globl host_probe_start, host_probe_end, host_probe_mc, host_probe_ud
host_probe_start:
        xor r15d, r15d
        mov rbp, [rdi + 8]               /* rounds; 0: only the accesses */
        test rbp, rbp
        jz 11f
1:      mov eax, 1                       /* mark: floor loop starts */
        vmmcall
        mov rbx, [rdi]
2:      xor eax, eax
        vmmcall
        dec rbx
        jnz 2b
        mov eax, 2                       /* mark: floor loop done, SEAMCALL loop starts */
        vmmcall
        mov rbx, [rdi]
3:      mov eax, 32                      /* TDH.SYS.INFO */
        .byte 0x66, 0x0f, 0x01, 0xcf     /* SEAMCALL: writes RAX, RCX, RDX, R8..R13 */
        dec rbx
        jnz 3b
        mov eax, 3                       /* mark: SEAMCALL loop done */
        vmmcall
        dec rbp
        jnz 1b
11:     lea rsi, [rdi + 16]
4:      mov rdx, [rsi]
        test rdx, rdx
        jz 7f
        lea r14, [rip + 5f]
        xor eax, eax
        test dl, 1                       /* bit 0 set: read only */
        jnz 12f
        mov rax, [rdx]                   /* read: #MC, RAX stays 0 */
5:      mov [rsi + 0x800], rax           /* what the read returned, for the TSM to show */
        lea r14, [rip + 6f]
        movabs rcx, 0x5EA3C0DE5EA3C0DE
        mov [rdx], rcx                   /* write: #MC, nothing written */
6:      add rsi, 8
        jmp 4b
12:     lea r14, [rip + 13f]
        mov rax, [rdx - 1]
13:     mov [rsi + 0x800], rax
        jmp 6b
7:      .byte 0x66, 0x0f, 0x01, 0xcc     /* TDCALL from the host: #UD, counted at [RDI + 0x808] */
        xor ebp, ebp                     /* read the fault log back: RBP = entries */
8:      mov eax, 0x8001                  /* SEAMLESS.HOST.FAULT.RD */
        .byte 0x66, 0x0f, 0x01, 0xcf
        test r9, r9
        jz 9f
        inc rbp
        jmp 8b
9:      mov eax, 4
        vmmcall
10:     hlt
        jmp 10b
host_probe_mc:
        mov [rsp], r14
        inc r15
        iretq
host_probe_ud:
        inc qword ptr [rdi + 0x808]
        add qword ptr [rsp], 4
        iretq
host_probe_end:
