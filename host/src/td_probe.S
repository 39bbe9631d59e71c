/* The probe TD: 8 KiB that the host agent PAGE.ADDs at GPA 0xFFFFE000..0xFFFFFFFF, so that
 * its last 16 bytes are the reset vector, and runs with TDH.VP.ENTER in a TD world. It is data
 * to the TSM (never executed in host mode) and, like TDVF, starts in TDX's initial state:
 * 32-bit flat protected mode, paging off, EFER.LME = 1, EBX = GPAW, ESI = vCPU index.
 *
 * GPAs it uses, all PAGE.ADDed (zero) but the last:
 *   0x800000 PML4, 0x801000 PDPT (1 GiB identity pages), 0x802000 stack, 0x803000 IDT,
 *   0x804000 results (R15 points there), 0x805000 the page the host blocks while the TD uses it,
 *   0x806000 PAGE.AUGed and never accepted: PENDING.
 * Results page: 0x00 GPAW, 0x08 vCPU index, 0x10 CPUID.0 EAX, 0x14 vendor (EBX EDX ECX),
 *   0x20 CPUID.1 ECX, 0x24 CPUID.0x21 (EBX EDX ECX), 0x30 the PENDING page's word after the
 *   #VE handler accepted it, 0x38 best round of TDG.VP.INFO (TSC ticks), 0x40 iterations,
 *   0x48 rounds, 0x50 the blocked page's word once it came back, 0x58 and 0x60 the two shared
 *   pages' words, 0x78 XMM0 as the TD found it at entry, 0xE8 #UDs (SEAMCALL),
 *   0xF0 ACCEPT status in the #VE handler, 0xF8 #VEs, 0x100.. one 0x30-byte record per #VE:
 *   VEINFO.GET's RAX, RCX, RDX, R8, R9, R10.
 * Host protocol, TDG.VP.VMCALL R10: 0x100 + k reports words 3k..3k+2 of the results page in
 *   R11..R13; 0x200 asks the host to BLOCK and TRACK the page in R11 (then the TD touches it);
 *   0x400 asks the host for its shared table (SEAMLESS.SHARED.EPT.SET; GPA 1 << 47 is linear
 *   4 GiB in the TD);
 *   0x500 exposes R14 and R15 (RCX = 0xFFEC, as edk2 passes it) holding 0x1414 and 0x1515,
 *   the host answers in R14 and R15, and the TD keeps the answers at 0x68 and 0x70;
 *   0x600 follows a spin of 2^26 iterations with interrupts off, which the TSM's preemption
 *   timer must have cut into time slices (external-interrupt exits) before it;
 *   0x300 exposes R10..R13 only (RCX = 0x3C00) and leaves a secret in every other register
 *   (XMM0..15 included),
 *   and the host answers in R11 an address of its own memory, which the TD then reads. */
        .section .rodata.td_probe, "a"
        .balign 4096
        .globl td_probe_start, td_probe_end
td_probe_start:
        .code32
start32:
        mov esp, 0x803000
        mov edi, 0x800000
        mov dword ptr [edi], 0x801003
        mov edi, 0x801000
        mov dword ptr [edi], 0x00000083
        mov dword ptr [edi + 8], 0x40000083
        mov dword ptr [edi + 16], 0x80000083
        mov dword ptr [edi + 24], 0xC0000083
        mov dword ptr [edi + 32], 0x00000083  /* 4..5 GiB -> the shared GPA 1 << 47 */
        mov dword ptr [edi + 36], 0x8000
        mov eax, cr4
        or eax, 0x620                    /* PAE, OSFXSR, OSXMMEXCPT */
        mov cr4, eax
        mov eax, 0x800000
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000               /* PG: EFER.LME is already 1, so long mode */
        mov cr0, eax
        lgdt [0xFFFFFF20]                /* gdtr, placed at offset 0x1F20 below */
        push 0x18
        push 0xFFFFE100                  /* long64, placed at offset 0x100 */
        retf

        .code64
        .org 0x100
long64:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, 0x803000
        mov r15, 0x804000
        mov [r15 + 0x00], rbx
        mov [r15 + 0x08], rsi
        movq rax, xmm0                   /* TDX's initial state: XMM0 = 0, never the host's */
        mov [r15 + 0x78], rax
        lea rax, [rip + ve_handler]
        mov edi, 20
        call set_gate
        lea rax, [rip + ud_handler]
        mov edi, 6
        call set_gate
        lidt [rip + idtr]

        /* CPUID as TDVF's IsTdx reads it, then a leaf the TSM leaves to #VE. */
        xor eax, eax
        xor ecx, ecx
        cpuid
        mov [r15 + 0x10], eax
        mov [r15 + 0x14], ebx
        mov [r15 + 0x18], edx
        mov [r15 + 0x1C], ecx
        mov eax, 1
        xor ecx, ecx
        cpuid
        mov [r15 + 0x20], ecx
        mov eax, 0x21
        xor ecx, ecx
        cpuid
        mov [r15 + 0x24], ebx
        mov [r15 + 0x28], edx
        mov [r15 + 0x2C], ecx
        mov eax, 0x40000000              /* the hypervisor range: the TSM leaves it to #VE */
        cpuid                            /* #VE 10, length 2 */
        hlt                              /* #VE 12, length 1 */
        in al, 0x80                      /* #VE 30, length 2 */
        mov ecx, 0x10
        rdmsr                            /* #VE 31, length 2 */
        mov rax, [0x806000]              /* PENDING: #VE 48; the handler accepts, the load retries */
        mov [r15 + 0x30], rax

        /* TDCALL round trip: best of 10 rounds of 50 TDG.VP.INFO. TDCALL writes RAX, RCX, RDX
         * and R8..R13: the loop keeps its state in RBX, RSI, RDI, RBP and R14. */
        mov rdi, -1
        mov r14, 10
2:      lfence
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov rsi, rax
        mov ebx, 50
3:      mov eax, 1                       /* TDG.VP.INFO */
        .byte 0x66, 0x0f, 0x01, 0xcc     /* TDCALL */
        dec ebx
        jnz 3b
        lfence
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, rsi
        cmp rax, rdi
        cmovb rdi, rax
        dec r14
        jnz 2b
        mov [r15 + 0x38], rdi
        mov qword ptr [r15 + 0x40], 50
        mov qword ptr [r15 + 0x48], 10

        /* A page in use, blocked by the host while the TD runs: the next touch must exit. */
        mov rax, 0x5A5AC0DE00000001
        mov [0x805000], rax
        mov r10d, 0x200
        mov r11d, 0x805000
        xor ecx, ecx                     /* expose R10..R13 only */
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc     /* TDG.VP.VMCALL */
        mov rax, [0x805000]
        mov [r15 + 0x50], rax

        /* The shared half: the host names its table, the TD reads two shared pages. The
         * second the host first points at a TD private page: refused (an exit), then fixed. */
        mov r10d, 0x400
        xor ecx, ecx                     /* expose R10..R13 only */
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc     /* TDG.VP.VMCALL */
        mov rax, 0x100900000
        mov rax, [rax]
        mov [r15 + 0x58], rax
        mov rax, 0x100901000
        mov rax, [rax]
        mov [r15 + 0x60], rax

        /* SEAMCALL from a TD: #UD. */
        .byte 0x66, 0x0f, 0x01, 0xcf
        .byte 0x66, 0x0f, 0x01, 0xcf

        /* GHCI's operands in R14/R15: exposed by the mask, carried both ways. */
        push r15
        mov ecx, 0xFFEC
        mov r10d, 0x500
        mov r14d, 0x1414
        mov r15d, 0x1515
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc     /* TDG.VP.VMCALL */
        mov rax, r15
        pop r15
        mov [r15 + 0x68], r14
        mov [r15 + 0x70], rax

        /* A spin with interrupts off and no exit: only the TSM's preemption timer ends it
         * early (external-interrupt exits), then VMCALL 0x600. */
        cli
        mov ecx, 0x4000000
8:      dec rcx
        jnz 8b
        mov r10d, 0x600
        xor ecx, ecx
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc     /* TDG.VP.VMCALL */

        /* Report the results page, three words per VMCALL. */
        xor ebx, ebx
4:      lea r10, [rbx + 0x100]
        imul rsi, rbx, 24
        mov r11, [r15 + rsi]
        mov r12, [r15 + rsi + 8]
        mov r13, [r15 + rsi + 16]
        xor ecx, ecx                     /* expose R10..R13 only */
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc
        inc ebx
        cmp ebx, 22
        jb 4b

        /* Secrets in every register the VMCALL does not expose (RCX = 0x3C00: R10..R13), the
         * vector registers included. */
        mov rax, 0x5EC2E70000000000
        movq xmm0, rax
        lea rdx, [rax + 0x11]
        movq xmm1, rdx
        lea rdx, [rax + 0x12]
        movq xmm2, rdx
        lea rdx, [rax + 0x13]
        movq xmm3, rdx
        lea rdx, [rax + 0x14]
        movq xmm4, rdx
        lea rdx, [rax + 0x15]
        movq xmm5, rdx
        lea rdx, [rax + 0x16]
        movq xmm6, rdx
        lea rdx, [rax + 0x17]
        movq xmm7, rdx
        lea rdx, [rax + 0x18]
        movq xmm8, rdx
        lea rdx, [rax + 0x19]
        movq xmm9, rdx
        lea rdx, [rax + 0x1A]
        movq xmm10, rdx
        lea rdx, [rax + 0x1B]
        movq xmm11, rdx
        lea rdx, [rax + 0x1C]
        movq xmm12, rdx
        lea rdx, [rax + 0x1D]
        movq xmm13, rdx
        lea rdx, [rax + 0x1E]
        movq xmm14, rdx
        lea rdx, [rax + 0x1F]
        movq xmm15, rdx
        lea rbx, [rax + 0x03]
        mov ecx, 0x3C00
        lea rdx, [rax + 0x02]
        lea rsi, [rax + 0x06]
        lea rdi, [rax + 0x07]
        lea rbp, [rax + 0x05]
        lea r8, [rax + 0x08]
        lea r9, [rax + 0x09]
        lea r14, [rax + 0x0E]
        lea r15, [rax + 0x0F]
        mov r10d, 0x300
        mov r11d, 0x1111
        mov r12d, 0x2222
        mov r13d, 0x3333
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc
        /* The host's memory: an address the host named, which the S-EPT does not map. */
        mov rax, [r11]
        mov r10d, 0x3FF                  /* not reached: the load exits to the host */
        xor ecx, ecx                     /* expose R10..R13 only */
        xor eax, eax
        .byte 0x66, 0x0f, 0x01, 0xcc
5:      hlt
        jmp 5b

/* IDT gate `edi` -> handler `rax` (64-bit interrupt gate, selector 0x18). */
set_gate:
        mov ecx, edi
        shl rcx, 4
        add rcx, 0x803000
        mov rdx, rax
        and edx, 0xFFFF
        or rdx, 0x180000
        mov r8, 0x8E00
        shl r8, 32
        or rdx, r8
        mov r8, rax
        shr r8, 16
        and r8, 0xFFFF
        shl r8, 48
        or rdx, r8
        mov [rcx], rdx
        mov rdx, rax
        shr rdx, 32
        mov [rcx + 8], rdx
        ret

/* #VE: VEINFO.GET into the next record; a PENDING page is accepted and the access retried,
 * anything else skipped by its instruction length. */
ve_handler:
        push rax
        push rcx
        push rdx
        push r8
        push r9
        push r10
        push r11
        push r12
        push r13
        mov eax, 3                       /* TDG.VP.VEINFO.GET */
        .byte 0x66, 0x0f, 0x01, 0xcc
        mov r11, [r15 + 0xF8]
        imul r11, r11, 0x30
        lea r12, [r15 + r11 + 0x100]
        mov [r12], rax
        mov [r12 + 8], rcx
        mov [r12 + 16], rdx
        mov [r12 + 24], r8
        mov [r12 + 32], r9
        mov [r12 + 40], r10
        inc qword ptr [r15 + 0xF8]
        cmp ecx, 48
        jne 6f
        mov rcx, r9
        and rcx, -4096                   /* level 0: 4K */
        mov eax, 6                       /* TDG.MEM.PAGE.ACCEPT */
        .byte 0x66, 0x0f, 0x01, 0xcc
        mov [r15 + 0xF0], rax
        jmp 7f
6:      mov eax, r10d
        add [rsp + 72], rax
7:      pop r13
        pop r12
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdx
        pop rcx
        pop rax
        iretq

/* #UD (SEAMCALL in a TD): counted and skipped. */
ud_handler:
        inc qword ptr [r15 + 0xE8]
        add qword ptr [rsp], 4
        iretq

        /* Fixed offsets: the 32-bit code names them by GPA. */
        .org 0x1F00
gdt:    .quad 0
        .quad 0x00CF9A000000FFFF         /* 0x08: 32-bit code */
        .quad 0x00CF92000000FFFF         /* 0x10: data */
        .quad 0x00AF9A000000FFFF         /* 0x18: 64-bit code */
        .org 0x1F20
gdtr:   .word 31
        .long 0xFFFFFF00
idtr:   .word 4095
        .quad 0x803000

        /* The reset vector, at GPA 0xFFFFFFF0. */
        .org 0x1FF0
        .code32
        jmp start32
        .code64
        .org 0x2000
td_probe_end:
