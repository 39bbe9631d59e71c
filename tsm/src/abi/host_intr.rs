//! Interrupts for a TD vCPU: SEAMLESS.VP.POST, the host's way of raising a vector in a vCPU's
//! virtual APIC (`crate::vapic`). TDX does this with a posted-interrupt descriptor the VMM
//! writes and a notification IPI; seamless has one CPU and a TSM that runs the vCPU, so the
//! post is a call, and the TSM injects the vector when the vCPU can take it at its next
//! TDH.VP.ENTER, with nothing the host can see of the TD's ISR, TPR or EOIs.

use crate::abi::host::{leaf, HostLeaf};
use crate::abi::{LeafSpec, Reg, Regs};
use crate::error::{TsmError, TsmResult};
use crate::platform::Platform;
use crate::status::{Operand, Status};
use crate::td::Lifecycle;
use crate::vapic::VirtualApic;
use crate::Tsm;

impl<P: Platform> Tsm<P> {
    pub(crate) const VP_POST: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::VP_POST,
            name: "SEAMLESS.VP.POST",
            summary: "seamless only (TDX: the posted-interrupt descriptor and its notification): requests interrupt vector RDX in the vCPU's virtual APIC (its IRR). The TSM injects the highest requested vector above the vCPU's processor priority when the vCPU can take it (interrupts open, no interrupt shadow), from its next TDH.VP.ENTER on, and wakes it from nothing: a vCPU that halted asked the host with TDG.VP.VMCALL<HLT>, and the host enters it again after posting. The TD's EOI, TPR and ISR stay in the TSM. A vector already requested is not requested twice (as in an IRR).",
            inputs: &[(Reg::Rcx, "TDVPR page address"), (Reg::Rdx, "vector, 16..=255")],
            outputs: &[(Reg::Rcx, "1 if the vector was already requested (the two merge), else 0")],
            requires: "TD finalized (RUNNABLE). The vCPU may be in guest mode.",
            errors: &[
                (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDVPR page"),
                (Status::TD_NOT_FINALIZED, "TDH.MR.FINALIZE not done"),
                (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                (Status::OPERAND_INVALID, "RDX not a vector 16..=255 (0..15 are exceptions)"),
            ],
        },
        handler: Self::vp_post,
    };

    fn vp_post(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (idx, v) = self.vcpu_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Runnable)?;
        let vector = u8::try_from(regs.rdx).ok().filter(|&v| v >= VirtualApic::FIRST_VECTOR);
        let vector = vector.ok_or(TsmError::OperandInvalid(Operand::Rdx))?;
        let frame = td.vcpus[v].ok_or(TsmError::Corrupt)?.tdvpr;
        // ALL CHECKS PASSED: nothing below can fail.
        let mut apic = self.vapic(frame);
        out.rcx = u64::from(apic.requested(vector));
        apic.post(vector);
        self.set_vapic(frame, &apic);
        Ok(Status::SUCCESS)
    }
}
