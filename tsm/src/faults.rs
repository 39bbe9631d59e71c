//! The host fault log: every access of the host world outside its nested map (a TD's page, a
//! control page, the PAMT, the TSM's own memory, MMIO a TDI imported) is refused by the machine
//! before it reads or writes anything; the firmware reports it here, and the host reads the log
//! back with SEAMLESS.HOST.FAULT.RD. The log names what the address is, from the PAMT and the
//! TSM's private ranges, so a VMM can tell a bug from an attack on a given object.
//!
//! The same log takes the host world's other refused accesses, which reach the TSM as
//! intercepts rather than nested page faults: a write to an I/O port the TSM keeps (fw_cfg's
//! selector naming the platform secret, fw_cfg's DMA interface, the ISA DMA controllers) and a
//! WRMSR (no MSR is the host world's).

use crate::addr::{FrameRange, HostPhysAddr, Pfn};
use crate::pamt::PageType;
use crate::platform::Platform;
use crate::Tsm;

/// Entries kept; older ones are overwritten (the total still counts them).
pub const FAULT_LOG_ENTRIES: usize = 32;

/// What a refused address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// The TSM's own memory (image, stacks, its state, nested tables).
    Tsm,
    /// A convertible frame the PAMT gives to the TSM or a TD, with its owner.
    Page {
        /// The frame's PAMT type.
        ty: PageType,
        /// Its owner (a TDR frame for TD pages; zero where the type has none).
        owner: Pfn,
    },
    /// Device MMIO a TDI imported (DMABUF.IMPORT), with the TDI's page.
    ImportedMmio {
        /// The TDI's page frame.
        tdi: Pfn,
    },
    /// None of the above and still outside the host's map: the IOMMU's registers, holes.
    NotHostMemory,
    /// A write to an I/O port the TSM keeps, with the value written (the access's address is
    /// the port).
    Port {
        /// The value written.
        value: u64,
    },
    /// A WRMSR, with the value written (the access's address is the MSR's index).
    Msr {
        /// EDX:EAX.
        value: u64,
    },
    /// An XSETBV, with the value written (the access's address is the XCR's index).
    Xcr {
        /// EDX:EAX.
        value: u64,
    },
}

impl FaultTarget {
    /// The class number RDX bits 15:8 carry: the PAMT type, 0xF0 for the TSM, 0xF2 for imported
    /// MMIO, 0xF3 for a port, 0xF4 for an MSR, 0xF5 for an XCR, 0xF1 otherwise.
    pub const fn code(self) -> u8 {
        match self {
            FaultTarget::Tsm => 0xF0,
            FaultTarget::Page { ty, .. } => ty as u8,
            FaultTarget::ImportedMmio { .. } => 0xF2,
            FaultTarget::NotHostMemory => 0xF1,
            FaultTarget::Port { .. } => 0xF3,
            FaultTarget::Msr { .. } => 0xF4,
            FaultTarget::Xcr { .. } => 0xF5,
        }
    }

    /// What SEAMLESS.HOST.FAULT.RD returns in R8: the owner's page for a page or imported MMIO,
    /// the value written for a port, an MSR or an XCR, else 0.
    pub const fn detail(self) -> u64 {
        match self {
            FaultTarget::Page { owner, .. } => owner.addr().raw(),
            FaultTarget::ImportedMmio { tdi } => tdi.addr().raw(),
            FaultTarget::Port { value } | FaultTarget::Msr { value } | FaultTarget::Xcr { value } => value,
            FaultTarget::Tsm | FaultTarget::NotHostMemory => 0,
        }
    }
}

/// One refused access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFault {
    /// What the host accessed: a physical address, or for [`FaultTarget::Port`] the port and
    /// for [`FaultTarget::Msr`] the MSR's index, for [`FaultTarget::Xcr`] the XCR's.
    pub addr: u64,
    /// A write (else a read or fetch).
    pub write: bool,
    /// The host's RIP at the access.
    pub rip: u64,
    /// What the address is.
    pub target: FaultTarget,
}

impl HostFault {
    /// A short name of the target, for logs.
    pub const fn what(&self) -> &'static str {
        match self.target {
            FaultTarget::Tsm => "TSM memory",
            FaultTarget::ImportedMmio { .. } => "MMIO a TDI imported",
            FaultTarget::NotHostMemory => "not host memory",
            FaultTarget::Port { .. } => "an I/O port the TSM keeps",
            FaultTarget::Msr { .. } => "an MSR",
            FaultTarget::Xcr { .. } => "an XCR",
            FaultTarget::Page { ty, .. } => match ty {
                PageType::Free => "free page",
                PageType::Reserved => "PAMT / reserved",
                PageType::Regular => "TD private page",
                PageType::Tdr => "TDR",
                PageType::Tdcs => "TDCS",
                PageType::Tdvpr => "TDVPR",
                PageType::Sept => "S-EPT table",
                PageType::Pdev => "PDEV page",
                PageType::Tdi => "TDI page",
                PageType::IommuTable => "IOMMU table",
            },
        }
    }
}

/// The ring of recent faults.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLog {
    entries: [Option<HostFault>; FAULT_LOG_ENTRIES],
    /// Index of the oldest unread entry.
    head: usize,
    /// Unread entries.
    unread: usize,
    /// Faults recorded since boot.
    pub total: u64,
}

impl FaultLog {
    fn push(&mut self, f: HostFault) {
        let at = (self.head + self.unread) % FAULT_LOG_ENTRIES;
        self.entries[at] = Some(f);
        if self.unread == FAULT_LOG_ENTRIES {
            self.head = (self.head + 1) % FAULT_LOG_ENTRIES;
        } else {
            self.unread += 1;
        }
        self.total += 1;
    }

    /// Takes the oldest unread entry.
    pub(crate) fn pop(&mut self) -> Option<HostFault> {
        if self.unread == 0 {
            return None;
        }
        let f = self.entries[self.head].take();
        self.head = (self.head + 1) % FAULT_LOG_ENTRIES;
        self.unread -= 1;
        f
    }

    /// Unread entries.
    pub const fn unread(&self) -> usize {
        self.unread
    }
}

impl<P: Platform> Tsm<P> {
    /// Records an access of the host world that its nested map refused (the firmware calls this
    /// from the nested-page-fault exit); returns the entry, classified.
    pub fn record_host_fault(&mut self, addr: HostPhysAddr, write: bool, rip: u64) -> HostFault {
        let pfn = addr.pfn();
        let target = if self.is_private(FrameRange { start: pfn, count: 1 }) {
            FaultTarget::Tsm
        } else {
            match (self.pamt_entry(pfn), self.mmio_owner(pfn.raw())) {
                (Some(e), _) => FaultTarget::Page { ty: e.ty, owner: e.owner },
                (None, Some((t, _))) => match self.tdis.get(t).and_then(Option::as_ref) {
                    Some(tdi) => FaultTarget::ImportedMmio { tdi: tdi.page },
                    None => FaultTarget::NotHostMemory,
                },
                (None, None) => FaultTarget::NotHostMemory,
            }
        };
        let f = HostFault { addr: addr.raw(), write, rip, target };
        self.host_faults.push(f);
        f
    }

    /// Records a write of the host world to an I/O port the TSM keeps, which the TSM did not
    /// pass on (the firmware calls this from the I/O intercept); returns the entry.
    pub fn record_host_port(&mut self, port: u16, value: u64, rip: u64) -> HostFault {
        let f = HostFault { addr: u64::from(port), write: true, rip, target: FaultTarget::Port { value } };
        self.host_faults.push(f);
        f
    }

    /// Records a WRMSR of the host world, which the TSM dropped (the firmware calls this from
    /// the MSR intercept); returns the entry.
    pub fn record_host_msr(&mut self, msr: u32, value: u64, rip: u64) -> HostFault {
        let f = HostFault { addr: u64::from(msr), write: true, rip, target: FaultTarget::Msr { value } };
        self.host_faults.push(f);
        f
    }

    /// Records an XSETBV of the host world, which the TSM refused (the firmware calls this from
    /// the XSETBV intercept); returns the entry.
    pub fn record_host_xcr(&mut self, xcr: u32, value: u64, rip: u64) -> HostFault {
        let f = HostFault { addr: u64::from(xcr), write: true, rip, target: FaultTarget::Xcr { value } };
        self.host_faults.push(f);
        f
    }

    /// The host fault log.
    pub fn host_faults(&self) -> &FaultLog {
        &self.host_faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(n: u64) -> HostFault {
        HostFault { addr: n << 12, write: false, rip: n, target: FaultTarget::Tsm }
    }

    #[test]
    fn log_keeps_the_latest_entries_in_order_and_counts_all() {
        let mut log = FaultLog::default();
        for n in 0..(FAULT_LOG_ENTRIES as u64 + 3) {
            log.push(fault(n));
        }
        assert_eq!(log.total, FAULT_LOG_ENTRIES as u64 + 3);
        assert_eq!(log.unread(), FAULT_LOG_ENTRIES);
        for n in 3..(FAULT_LOG_ENTRIES as u64 + 3) {
            assert_eq!(log.pop().map(|f| f.rip), Some(n));
        }
        assert_eq!(log.pop(), None);
    }
}
