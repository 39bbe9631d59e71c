/* PVH boot path: QEMU enters _start32 in 32-bit protected mode, paging off, with EBX holding
 * the physical address of hvm_start_info. We read the TSC first (boot time is measured from
 * here), build page tables that map the low 4 GiB twice with 2 MiB pages (the default qemu64
 * CPU has no 1 GiB pages): identity at 0 and the direct map at DIRECT_MAP_BASE
 * (0xffff800000000000, PML4 slot 256, sharing the same PDPT), enable SSE the way the compiler's
 * target-feature code expects it (CR0.EM=0, CR0.MP=1, CR4.OSFXSR, CR4.OSXMMEXCPT), enter long
 * mode and call rust_main(start_info) on the boot stack. Tables and stack are in .bss; Rust
 * replaces this GDT with its own (with a TSS) and installs the IDT. */

/* ELF note telling QEMU (and Xen) the 32-bit entry point. QEMU reads the descriptor as a
 * size_t, so it is 8 bytes; the note's alignment must be 4 (see linker.ld). */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz */
    .long 18                    /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .quad _start32

    .set PTE_PRESENT_WRITABLE, 0x3
    .set PTE_LARGE, 0x80
    .set CR4_PAE_OSFXSR_OSXMMEXCPT, 0x620
    .set CR0_EM, 0x4
    .set CR0_MP, 0x2
    .set DIRECT_MAP_SLOT, 256   /* PML4 index of 0xffff800000000000 */
    .set MSR_EFER, 0xc0000080
    .set EFER_LME, 0x100
    .set CR0_PE_PG, 0x80000001
    .set TABLE_BYTES, 6 * 4096  /* PML4, PDPT, 4 PDs */

    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov %ebx, %esi              /* keep hvm_start_info for rust_main */
    rdtsc                       /* boot_tsc: where boot_to_tsm_ready starts */
    mov %eax, boot_tsc
    mov %edx, boot_tsc + 4
    mov $boot_stack_top, %esp

    /* Zero the tables: do not rely on the loader having cleared .bss. */
    mov $boot_pml4, %edi
    xor %eax, %eax
    mov $(TABLE_BYTES / 4), %ecx
    rep stosl

    /* 2048 PD entries: 2 MiB pages covering 0..4 GiB. */
    mov $boot_pd, %edi
    mov $(PTE_LARGE | PTE_PRESENT_WRITABLE), %eax
    mov $2048, %ecx
1:  mov %eax, (%edi)            /* high half stays 0: every frame is below 4 GiB */
    add $0x200000, %eax
    add $8, %edi
    loop 1b

    /* PDPT[0..4] -> the four PDs; PML4[0] -> PDPT. */
    mov $boot_pdpt, %edi
    mov $(boot_pd + PTE_PRESENT_WRITABLE), %eax
    mov $4, %ecx
2:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop 2b
    movl $(boot_pdpt + PTE_PRESENT_WRITABLE), boot_pml4
    movl $(boot_pdpt + PTE_PRESENT_WRITABLE), boot_pml4 + DIRECT_MAP_SLOT * 8

    /* SSE: no x87 emulation trap, monitor coprocessor, FXSAVE and SIMD exceptions enabled. */
    mov %cr0, %eax
    and $~CR0_EM, %eax
    or $CR0_MP, %eax
    mov %eax, %cr0
    fninit

    /* Long mode: PAE (with the SSE bits), CR3, EFER.LME, then paging. */
    mov %cr4, %eax
    or $CR4_PAE_OSFXSR_OSXMMEXCPT, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $CR0_PE_PG, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $_start64

    .code64
_start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp   /* 16-byte aligned before the call, as the ABI wants */
    mov %esi, %edi              /* rust_main(start_info: u32) */
    call rust_main
3:  hlt
    jmp 3b

    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0                     /* null */
    /* The accessed bits are preset: loading a selector would otherwise make the CPU write them,
     * changing loaded bytes before MRSEAM is taken. */
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf93000000ffff    /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    /* In .bss, not .data: written before MRSEAM is taken, so it must not be a loaded byte. */
    .p2align 3
    .global boot_tsc
boot_tsc:
    .skip 8

    .p2align 12
    .global boot_pml4
    .global boot_pd
    .global boot_stack
    .global boot_stack_top
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .global boot_stack_guard
boot_stack_guard:               /* unmapped by Rust (arch::paging): an overflow faults here */
    .skip 4096
boot_stack:
    .skip 512 * 1024            /* the TSM object (about 100 KiB) lives on it */
boot_stack_top:
