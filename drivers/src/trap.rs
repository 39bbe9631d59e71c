//! The exception entry both bare-metal worlds' binaries use, the host agent (`seamless-host`)
//! and the TD guest (`seamless-guest`): 32 stubs that push the vector (and a zero error code
//! where the CPU pushes none), save the GPRs as a [`TrapFrame`] and call the binary's handler,
//! and the IDT of interrupt gates to them ([`Idt`]). Each binary instantiates the stubs once
//! with [`exception_stubs!`], naming its table and its handler, and loads the IDT at its start.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use x86::bits64::segmentation::Descriptor64;
use x86::segmentation::{BuildDescriptor, DescriptorBuilder, GateDescriptorBuilder, SegmentSelector};
use x86::Ring;

/// The registers the stubs save, lowest address first: the GPRs, then the vector and error
/// code the stub pushed, then what the CPU pushed (RIP, CS, RFLAGS, RSP, SS). The handler may
/// change any of them; returning resumes with the changed values.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Instantiates the 32 exception stubs: `$table` names a global `[u64; 32]` of their addresses
/// (declare it `unsafe extern "C" { static $table: [u64; 32]; }` and hand it to [`Idt::load`]),
/// `$handler` the `extern "C" fn(*mut TrapFrame)` they call. The stack is 16-byte aligned at the
/// call: the CPU aligns it before pushing its 40-byte frame, and 16 + 120 bytes follow.
#[macro_export]
macro_rules! exception_stubs {
    ($table:literal, $handler:literal) => {
        core::arch::global_asm!(concat!(
            ".pushsection .text\n",
            ".macro seamless_exception_stub vector, pushes_error\n",
            ".balign 16\n",
            $table,
            "_\\vector:\n",
            ".if \\pushes_error == 0\n",
            "push 0\n",
            ".endif\n",
            "push \\vector\n",
            "jmp ",
            $table,
            "_common\n",
            ".endm\n",
            ".irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31\n",
            "seamless_exception_stub \\v, 0\n",
            ".endr\n",
            // The vectors whose exceptions push an error code.
            ".irp v, 8,10,11,12,13,14,17,21,29,30\n",
            "seamless_exception_stub \\v, 1\n",
            ".endr\n",
            ".purgem seamless_exception_stub\n",
            $table,
            "_common:\n",
            "push rax\n push rbx\n push rcx\n push rdx\n push rsi\n push rdi\n push rbp\n",
            "push r8\n push r9\n push r10\n push r11\n push r12\n push r13\n push r14\n push r15\n",
            "mov rdi, rsp\n",
            "cld\n",
            "call ",
            $handler,
            "\n",
            "pop r15\n pop r14\n pop r13\n pop r12\n pop r11\n pop r10\n pop r9\n pop r8\n",
            "pop rbp\n pop rdi\n pop rsi\n pop rdx\n pop rcx\n pop rbx\n pop rax\n",
            "add rsp, 16\n",
            "iretq\n",
            ".section .rodata\n",
            ".balign 8\n",
            ".global ",
            $table,
            "\n",
            $table,
            ":\n",
            ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n",
            ".quad ",
            $table,
            "_\\v\n",
            ".endr\n",
            ".popsection\n",
        ));
    };
}

/// An IDT of 32 interrupt gates, one per exception vector, filled and loaded once.
#[derive(Debug)]
pub struct Idt {
    gates: UnsafeCell<[Descriptor64; 32]>,
    filled: AtomicBool,
}

// SAFETY: `load` writes the gates only once (`filled` guards it), before the CPU can use them;
// afterwards nothing writes them.
#[allow(unsafe_code)]
unsafe impl Sync for Idt {}

impl Idt {
    /// An IDT with no gate present.
    pub const fn new() -> Idt {
        Idt { gates: UnsafeCell::new([Descriptor64::NULL; 32]), filled: AtomicBool::new(false) }
    }

    /// Fills the table with a ring-0 interrupt gate through `code` to each stub in `stubs` (the
    /// table [`exception_stubs!`] built) and loads it with LIDT; `false`, and nothing changed,
    /// if it was loaded before.
    ///
    /// # Safety
    /// `stubs` must hold the addresses of the stubs [`exception_stubs!`] emitted, whose handler
    /// is sound to call with any frame of this CPU, and `code` the 64-bit code selector of the
    /// GDT the CPU runs with.
    #[allow(unsafe_code)]
    pub unsafe fn load(&'static self, stubs: &[u64; 32], code: SegmentSelector) -> bool {
        if self.filled.swap(true, Ordering::SeqCst) {
            return false;
        }
        let gates = self.gates.get();
        for (vector, &stub) in stubs.iter().enumerate() {
            let gate: Descriptor64 =
                <DescriptorBuilder as GateDescriptorBuilder<u64>>::interrupt_descriptor(code, stub)
                    .present()
                    .dpl(Ring::Ring0)
                    .finish();
            // SAFETY: the only writer (`filled` was false), before the table is loaded.
            unsafe { (*gates)[vector] = gate };
        }
        // SAFETY: the table is `'static`; every gate points at a stub the caller vouches for.
        unsafe {
            let table: &[Descriptor64; 32] = &*gates;
            x86::dtables::lidt(&x86::dtables::DescriptorTablePointer::new_from_slice(table));
        }
        true
    }
}

impl Default for Idt {
    fn default() -> Idt {
        Idt::new()
    }
}
