//! Transitional: firmware code that plays the part of the TD the guest binary (`guest/`) does
//! not do yet, mode `attack`'s guest calls, on the TD's vCPU while the binary waits in a
//! request. Its sequence of calls is `tsm_client::guest` (the same code the
//! binary runs); this module is its transport and its memory. [`TdVcpu`] is TDCALL as a direct call into `Tsm::guest_call` on behalf of the vCPU (a
//! TD world will execute the instruction instead); its memory is [`GuestMemory`], which resolves
//! a guest-physical address the way the CPU's second-stage walk does: through the TD's S-EPT,
//! and only to a MAPPED leaf (private RAM) or an MMIO_MAPPED leaf (the assigned device's
//! registers).
//!
//! The accessor reads the S-EPT with TDH.MEM.SEPT.RD. That is a host leaf, but it is read-only
//! and answers from the TSM's own tables, which is exactly what the MMU consults; using it keeps
//! the firmware off the TSM's internals (no read-only Rust view of the S-EPT is needed) and
//! refuses everything the hardware walk would fault on: FREE, PENDING, BLOCKED and
//! MMIO_PENDING entries, tables, and leaves above 4K.
//!
//! Shared memory (the guest–host channel of a VMCALL) is host memory: the guest reads and
//! writes it through one page the host named, and trusts nothing it finds there.

use tsm::abi::host::leaf as h;
use tsm::sept::SeptState;
use tsm::{Regs, Status, TdExit, Tsm};

use crate::drivers::phys::{Frames, Mmio};
use crate::platform::FirmwarePlatform;

pub use tsm_client::guest::{Guest, GuestError};

const PAGE: u64 = 4096;
const HPA_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// What a GPA resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    Ram(u64),
    Mmio(u64),
}

/// The guest's view of memory: its S-EPT, private RAM behind MAPPED leaves, and the device's
/// registers behind MMIO_MAPPED leaves.
#[derive(Debug)]
pub struct GuestMemory<'a> {
    tdr: u64,
    ram: Frames,
    device: Option<(&'a Mmio, u64, u64)>,
}

impl<'a> GuestMemory<'a> {
    /// The memory of the TD whose TDR is `tdr`, with the device registers `device` (at host
    /// address `base`, `len` bytes) reachable through MMIO_MAPPED leaves.
    pub fn new(tdr: u64, ram: Frames, device: Option<(&'a Mmio, u64, u64)>) -> GuestMemory<'a> {
        GuestMemory { tdr, ram, device }
    }

    fn resolve(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64) -> Result<Leaf, GuestError> {
        let r = tsm.host_call(&Regs::call(h::MEM_SEPT_RD, gpa & !0xFFF, self.tdr, 0, 0));
        if r.status() != Status::SUCCESS || r.rdx & 7 != 0 {
            return Err(GuestError::NotMapped { gpa, state: 0xFF });
        }
        let state = (r.rdx >> 8) as u8;
        let hpa = r.rcx & HPA_MASK;
        if state == SeptState::Mapped as u8 {
            Ok(Leaf::Ram(hpa))
        } else if state == SeptState::MmioMapped as u8 {
            Ok(Leaf::Mmio(hpa))
        } else {
            Err(GuestError::NotMapped { gpa, state })
        }
    }

    fn ram(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, len: usize) -> Result<u64, GuestError> {
        let off = gpa & 0xFFF;
        match self.resolve(tsm, gpa)? {
            Leaf::Ram(hpa) if off + len as u64 <= PAGE && self.ram.contains(hpa, PAGE) => Ok(hpa + off),
            Leaf::Ram(_) => Err(GuestError::NotMapped { gpa, state: SeptState::Mapped as u8 }),
            Leaf::Mmio(_) => Err(GuestError::NotMapped { gpa, state: SeptState::MmioMapped as u8 }),
        }
    }

    /// Reads private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless a MAPPED 4K leaf backs the page.
    pub fn read(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let hpa = self.ram(tsm, gpa, buf.len())?;
        self.ram.read(hpa, buf);
        Ok(())
    }

    /// Writes private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// As for [`GuestMemory::read`].
    pub fn write(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let hpa = self.ram(tsm, gpa, data.len())?;
        self.ram.write(hpa, data);
        Ok(())
    }

    /// Reads the 32-bit device register at `gpa`.
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless an MMIO_MAPPED 4K leaf backs the page;
    /// [`GuestError::MmioOutside`] if it points outside the device's registers.
    pub fn mmio_read_u32(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64) -> Result<u32, GuestError> {
        let hpa = match self.resolve(tsm, gpa)? {
            Leaf::Mmio(hpa) => hpa + (gpa & 0xFFF),
            Leaf::Ram(_) => return Err(GuestError::NotMapped { gpa, state: SeptState::Mapped as u8 }),
        };
        match self.device {
            Some((regs, base, len)) if hpa >= base && hpa + 4 <= base + len && hpa.is_multiple_of(4) => {
                Ok(regs.read_u32(hpa - base))
            }
            _ => Err(GuestError::MmioOutside { gpa, hpa }),
        }
    }
}

/// The TD's vCPU as the in-process guest runs on it: TDCALL as a direct call into the TSM, its
/// memory through [`GuestMemory`], and the shared page.
#[derive(Debug)]
pub struct TdVcpu<'t, 'm> {
    tsm: &'t mut Tsm<FirmwarePlatform>,
    vcpu: u64,
    mem: &'m GuestMemory<'m>,
    shared: u64,
}

impl<'t, 'm> TdVcpu<'t, 'm> {
    /// The vCPU whose TDVPR is `vcpu`, with its memory and the host page it shares.
    pub fn new(tsm: &'t mut Tsm<FirmwarePlatform>, vcpu: u64, mem: &'m GuestMemory<'m>, shared: u64) -> Self {
        TdVcpu { tsm, vcpu, mem, shared }
    }
}

impl tsm_client::Tdcall for TdVcpu<'_, '_> {
    fn tdcall(&mut self, regs: &mut Regs) -> Option<TdExit> {
        let r = self.tsm.guest_call(self.vcpu, regs);
        *regs = r.regs;
        r.exit
    }
}

impl tsm_client::GuestMemory for TdVcpu<'_, '_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.mem.read(self.tsm, gpa, buf)
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.mem.write(self.tsm, gpa, data)
    }
    fn mmio_read_u32(&mut self, gpa: u64) -> Result<u32, GuestError> {
        self.mem.mmio_read_u32(self.tsm, gpa)
    }
    fn shared_addr(&self) -> u64 {
        self.shared
    }
    fn shared_read(&mut self, offset: u64, buf: &mut [u8]) {
        self.mem.ram.read(self.shared + offset, buf);
    }
    fn shared_write(&mut self, offset: u64, data: &[u8]) {
        self.mem.ram.write(self.shared + offset, data);
    }
}
