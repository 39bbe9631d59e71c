/* The TD's first instructions. TDX enters vCPU 0 at 0xFFFFFFF0 in 32-bit flat protected mode,
 * paging off, EFER.LME already 1, EBX[5:0] = GPAW, ESI = the vCPU index (TDX module spec,
 * "Initial State of Guest TD vCPU"; TDVF's ResetVector relies on the same). The reset vector
 * jumps to start32, which builds the guest's own page tables in TEMP_MEM (page tables are not
 * measured: they are built here, from measured code), sets CR4.PAE and CR3, loads the guest's
 * GDT, sets CR0.PG (long mode, since LME is already on: a TD cannot write EFER) and far-jumps to
 * 64-bit code, which calls guest_main(gpaw, vcpu) on the guest's stack.
 *
 * Page tables, 2 MiB pages:
 *   PML4[0]   -> PDPT -> 4 PDs: GPA 0..4 GiB identity, but 1..2 GiB (the device window, where the
 *                host maps the TDI's MMIO) not present: the TD maps the MMIO pages it accepted,
 *                uncached, in a table of its own (`arch::map_device`), and nothing else there.
 *   PML4[256] -> PDPT_SHARED -> one PD: VA 0xFFFF_8000_0000_0000 + x -> GPA (1 << (GPAW-1)) + x,
 *                the first 1 GiB of the shared half.
 * Anything but GPAW 48 or 52 or a vCPU index other than 0 stops at once (ud2: a #UD the TSM
 * sees as the TD's failure, before any IDT exists). */

    .set PTE_P_RW, 0x3
    .set PTE_PS, 0x80
    .set PTE_PCD_PWT, 0x18
    .set CR4_PAE, 0x20
    .set CR0_PG, 0x80000000
    .set SHARED_SLOT, 256
    .set TABLE_BYTES, 9 * 4096      /* PML4, PDPT, 4 PDs, PDPT_SHARED, PD_SHARED, PT_DEVICE */
    .set STACK_BYTES, 64 * 1024
    .set CODE64, 0x08
    .set DATA64, 0x10

    .section .resetvector, "ax"
    .code32
    .global reset_vector
reset_vector:
    mov $start32, %eax              /* start32 is in the low image (linker.ld) */
    jmp *%eax
1:  hlt
    jmp 1b
    .balign 16, 0xf4

    .section .text.start32, "ax"
    .code32
start32:
    cli
    cld
    mov %ebx, %ebp
    and $0x3f, %ebp                 /* GPAW */
    cmp $48, %ebp
    je 1f
    cmp $52, %ebp
    je 1f
    ud2
1:  test %esi, %esi                 /* one vCPU: the BSP */
    jz 2f
    ud2
2:
    /* Zero the tables (TEMP_MEM is added zero, but a table must never trust that). */
    mov $guest_pml4, %edi
    xor %eax, %eax
    mov $(TABLE_BYTES / 4), %ecx
    rep stosl

    mov $guest_pdpt, %eax
    or $PTE_P_RW, %eax
    mov %eax, guest_pml4
    mov $guest_pd, %eax
    or $PTE_P_RW, %eax
    mov %eax, guest_pdpt
    add $0x1000, %eax
    mov %eax, guest_pdpt + 8
    add $0x1000, %eax
    mov %eax, guest_pdpt + 16
    add $0x1000, %eax
    mov %eax, guest_pdpt + 24

    /* 2048 PD entries: 2 MiB pages over 0..4 GiB; 1..2 GiB (entries 512..1023) left zero. */
    xor %ecx, %ecx
3:  cmp $512, %ecx
    jb 4f
    cmp $1024, %ecx
    jb 5f
4:  mov %ecx, %eax
    shl $21, %eax
    or $(PTE_P_RW | PTE_PS), %eax
    mov %eax, guest_pd(, %ecx, 8)
5:  inc %ecx
    cmp $2048, %ecx
    jb 3b

    /* The shared half: the high dword of every entry carries 1 << (GPAW - 1 - 32). */
    mov %ebp, %ecx
    sub $33, %ecx
    mov $1, %ebx
    shl %cl, %ebx
    mov $guest_pdpt_shared, %eax
    or $PTE_P_RW, %eax
    mov %eax, guest_pml4 + SHARED_SLOT * 8
    mov $guest_pd_shared, %eax
    or $PTE_P_RW, %eax
    mov %eax, guest_pdpt_shared
    xor %ecx, %ecx
5:  mov %ecx, %eax
    shl $21, %eax
    or $(PTE_P_RW | PTE_PS), %eax
    mov %eax, guest_pd_shared(, %ecx, 8)
    mov %ebx, guest_pd_shared + 4(, %ecx, 8)
    inc %ecx
    cmp $512, %ecx
    jb 5b

    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $guest_pml4, %eax
    mov %eax, %cr3
    lgdt guest_gdt_ptr
    mov %cr0, %eax
    or $CR0_PG, %eax
    mov %eax, %cr0
    ljmp $CODE64, $start64

    .code64
start64:
    mov $DATA64, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $guest_stack_top, %rsp
    mov %ebp, %edi                  /* guest_main(gpaw, vcpu) */
    xor %ebp, %ebp
    call guest_main
6:  hlt
    jmp 6b

/* Probes (mode attack, `probe.rs`): one instruction each that the TSM must refuse, at a known
 * address, so the exception handler can resume after it (`arch::caught`). guest_probe_load(addr)
 * returns the 8 bytes at addr, or 0 when the load raised an exception; guest_probe_seamcall()
 * executes SEAMCALL. */
    .text
    .global guest_probe_load
    .global guest_probe_load_at
    .global guest_probe_load_done
guest_probe_load:
guest_probe_load_at:
    mov (%rdi), %rax
guest_probe_load_done:
    ret

    .global guest_probe_seamcall
    .global guest_probe_seamcall_at
    .global guest_probe_seamcall_done
guest_probe_seamcall:
    xor %eax, %eax
guest_probe_seamcall_at:
    .byte 0x66, 0x0f, 0x01, 0xcf
guest_probe_seamcall_done:
    ret

    .section .rodata
    .p2align 3
guest_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: data, DPL 0 */
guest_gdt_end:
guest_gdt_ptr:
    .word guest_gdt_end - guest_gdt - 1
    .quad guest_gdt

    .section .temp.tables, "aw", @nobits
    .p2align 12
guest_pml4:         .skip 4096
guest_pdpt:         .skip 4096
    .global guest_pd
guest_pd:           .skip 4 * 4096
guest_pdpt_shared:  .skip 4096
guest_pd_shared:    .skip 4096
    .global guest_pt_device
guest_pt_device:    .skip 4096

    .section .temp.stack, "aw", @nobits
    .p2align 12
    .skip STACK_BYTES
guest_stack_top:
