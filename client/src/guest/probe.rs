//! The TD's side of mode `attack` (plan [`super::Plan::Probe`]): the calls and accesses a TD
//! makes that the TSM must refuse, one table both sides use. The host's attack table
//! (`host/src/attack.rs`) names a probe and the outcome it expects; the TD runs it.
//!
//! How a probe reaches the TD: while the TD waits in a request that carries no data of its own,
//! the host answers it with R11 = [`crate::vmcall::PROBE`] and a [`ProbeStep`] in the shared page;
//! the TD runs the probe and makes the same request again with the [`Outcome`] in the shared page
//! instead. Only a TD in the probe plan does this; its MRCONFIGID says so, its report would
//! say so too, and it never asks for one: a probe is a call the host chooses, and a TD that a
//! verifier trusts must not make host-chosen calls.

use tsm::abi::guest::leaf as g;
use tsm::Regs;
use zerocopy::byteorder::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{disk, GuestLayout};
use crate::nvme::PAGE;

/// A probe: what the TD does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Probe {
    /// TDG.MMIO.ACCEPT of BAR page 0 naming offset PAGE (the report puts another page there).
    MmioAcceptWrongOffset = 1,
    /// TDG.MMIO.ACCEPT of report range 3, which the report lacks.
    MmioAcceptMissingRange = 2,
    /// TDG.MMIO.ACCEPT for function + 1, of which the TD has no TDI.
    MmioAcceptOtherFunction = 3,
    /// TDG.MMIO.ACCEPT of the step's function's range 0: another TD's TDI (the other TD runs it).
    MmioAcceptForeignTdi = 4,
    /// TDG.MMIO.ACCEPT of private memory (the first work page).
    MmioAcceptPrivateMemory = 5,
    /// TDG.TDI.RD of the report digest into the BAR's GPA.
    TdiRdDigestIntoMmio = 6,
    /// TDG.TDI.RD of the evidence digests (96 bytes) at 0xFC0 into a page: across its end.
    TdiRdAcrossPage = 7,
    /// SEAMLESS.TDG.MR.ATTEST with its output at the BAR's GPA.
    AttestIntoMmio = 8,
    /// SEAMLESS.TDG.TDI.START for the lock generation after the step's.
    StaleAuthorisation = 9,
    /// The TD's own MMIO accessor asked for private memory: refused by the TD's code.
    MmioAccessorOnPrivateMemory = 10,
    /// The TD's own private-memory accessor asked for its device page: refused by the TD's code.
    PrivateAccessorOnDevicePage = 11,
    /// A load of the page the host AUGed and the TD never accepted: #VE (EPT violation).
    LoadPending = 12,
    /// A load of a work page the host blocked and tracked: an EPT-violation exit; once the host
    /// unblocked it, the load completes with the page's contents.
    LoadBlocked = 13,
    /// SEAMCALL (`66 0f 01 cf`) in the TD: #UD.
    Seamcall = 14,
    /// The next request made again with a secret in every register GHCI's mask could carry but
    /// RCX does not name (RDX, R8, R9, R14, R15), and RCX naming R10..R13 and the registers no
    /// GHCI call carries (RBX, RBP, RSI, RDI): none reaches the host, and its mask is R10..R13.
    Secrets = 15,
    /// A load of the last BAR page, which the TD left unaccepted: an EPT-violation exit, and the
    /// vCPU never runs past it (the last probe of a run).
    LoadUnacceptedMmio = 16,
    /// A load of a host page's address as a private GPA: an EPT-violation exit, never the host's
    /// bytes (the last probe of a run).
    LoadHostMemory = 17,
}

impl Probe {
    /// The probe numbered `n`.
    pub fn from_u8(n: u8) -> Option<Probe> {
        use Probe::*;
        Some(match n {
            1 => MmioAcceptWrongOffset,
            2 => MmioAcceptMissingRange,
            3 => MmioAcceptOtherFunction,
            4 => MmioAcceptForeignTdi,
            5 => MmioAcceptPrivateMemory,
            6 => TdiRdDigestIntoMmio,
            7 => TdiRdAcrossPage,
            8 => AttestIntoMmio,
            9 => StaleAuthorisation,
            10 => MmioAccessorOnPrivateMemory,
            11 => PrivateAccessorOnDevicePage,
            12 => LoadPending,
            13 => LoadBlocked,
            14 => Seamcall,
            15 => Secrets,
            16 => LoadUnacceptedMmio,
            17 => LoadHostMemory,
            _ => return None,
        })
    }

    /// The registers of a probe that is one guest call, built from the step's function and
    /// generation and the layout; `None` for the probes that are accesses or instructions.
    pub fn regs(self, l: &GuestLayout, step: &ProbeStep) -> Option<Regs> {
        let (f, generation, bar) = (step.function.get(), step.generation.get(), l.bar_gpa);
        let accept = |range: u64, function: u64, offset: u64, gpa: u64| Regs {
            r9: offset,
            ..Regs::call(g::MMIO_ACCEPT, gpa, range, function, 0)
        };
        Some(match self {
            Probe::MmioAcceptWrongOffset => accept(0, f, PAGE, bar),
            Probe::MmioAcceptMissingRange => accept(3, f, 0, bar),
            Probe::MmioAcceptOtherFunction => accept(0, f + 1, 0, bar),
            Probe::MmioAcceptForeignTdi => accept(0, f, 0, bar),
            Probe::MmioAcceptPrivateMemory => accept(0, f, 0, l.work),
            Probe::TdiRdDigestIntoMmio => Regs::call(g::TDI_RD, f, 2, bar, 0),
            Probe::TdiRdAcrossPage => Regs::call(g::TDI_RD, f, 3, l.work + 0xFC0, 0),
            Probe::AttestIntoMmio => Regs::call(g::MR_ATTEST, bar, l.work + PAGE, 0, 0),
            Probe::StaleAuthorisation => Regs::call(g::TDI_START, f, generation + 1, 0, 0),
            _ => return None,
        })
    }

    /// Whether the probe is a load of the step's GPA.
    pub fn is_load(self) -> bool {
        matches!(self, Probe::LoadPending | Probe::LoadBlocked | Probe::LoadUnacceptedMmio | Probe::LoadHostMemory)
    }
}

/// The page the host AUGs for [`Probe::LoadPending`] (the differential test's PENDING page: the
/// TD never accepts it).
pub const fn pending_page(l: &GuestLayout) -> u64 {
    disk::pending_page(l)
}

/// The work page the host blocks for [`Probe::LoadBlocked`]: the SNP export's page, unused in
/// the probe plan; it holds its own GPA since the TD's start (the TD writes each accepted
/// page's GPA into its first word).
pub const fn blocked_page(l: &GuestLayout) -> u64 {
    l.work + 3 * PAGE
}

/// R11 of a host's answer that asks for a probe.
pub const PROBE: u64 = crate::vmcall::PROBE;

/// What the host asks the TD to do (shared page, with [`PROBE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProbeStep {
    /// The [`Probe`].
    pub probe: u8,
    /// Zero.
    pub reserved: [u8; 7],
    /// The function id the probe names.
    pub function: U64,
    /// The lock generation it names.
    pub generation: U64,
    /// The GPA a load probe reads.
    pub gpa: U64,
}

const _: () = assert!(core::mem::size_of::<ProbeStep>() == 32);

impl ProbeStep {
    /// The step of `probe` with `function`, `generation` and `gpa`.
    pub fn new(probe: Probe, function: u64, generation: u64, gpa: u64) -> ProbeStep {
        ProbeStep {
            probe: probe as u8,
            reserved: [0; 7],
            function: U64::new(function),
            generation: U64::new(generation),
            gpa: U64::new(gpa),
        }
    }
}

/// What a probe came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The guest call returned: `status` is RAX.
    Status = 1,
    /// The TD's own accessor refused the access before any load.
    Refused = 2,
    /// A #VE: `reason`, `qualification`, `gpa` from TDG.VP.VEINFO.GET.
    Ve = 3,
    /// A #UD.
    Ud = 4,
    /// The load completed: `value`.
    Value = 5,
    /// The request is made again with the secret `value` in the registers the ABI does not
    /// expose.
    Secrets = 6,
    /// The step named no probe the TD knows.
    Unknown = 7,
}

/// The TD's answer to a [`ProbeStep`] (shared page, with the request made again).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Outcome {
    /// The probe.
    pub probe: u8,
    /// Its [`Kind`].
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 6],
    /// RAX of the guest call.
    pub status: U64,
    /// #VE exit reason.
    pub reason: U64,
    /// #VE qualification.
    pub qualification: U64,
    /// #VE GPA.
    pub gpa: U64,
    /// The value a load read, or the secret.
    pub value: U64,
}

const _: () = assert!(core::mem::size_of::<Outcome>() == 48);

impl Outcome {
    /// An outcome of `kind` for `probe`, every value zero.
    pub fn new(probe: u8, kind: Kind) -> Outcome {
        let z = U64::new(0);
        Outcome { probe, kind: kind as u8, reserved: [0; 6], status: z, reason: z, qualification: z, gpa: z, value: z }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_number_round_trips_and_others_are_refused() {
        for n in 1..=17 {
            assert_eq!(Probe::from_u8(n).map(|p| p as u8), Some(n));
        }
        assert_eq!(Probe::from_u8(0), None);
        assert_eq!(Probe::from_u8(18), None);
    }

    #[test]
    fn a_probe_is_a_call_or_a_load_never_both() {
        let l = super::super::DEMO_LAYOUT;
        let step = ProbeStep::new(Probe::StaleAuthorisation, 0x18, 1, 0);
        for n in 1..=17 {
            let p = Probe::from_u8(n).unwrap_or(Probe::Seamcall);
            assert!(!(p.regs(&l, &step).is_some() && p.is_load()), "{p:?}");
        }
        assert_eq!(Probe::StaleAuthorisation.regs(&l, &step).map(|r| r.rdx), Some(2), "generation + 1");
        assert_eq!(Probe::MmioAcceptForeignTdi.regs(&l, &step).map(|r| r.r8), Some(0x18));
    }
}
