//! The remapping unit's register-level formats the TSM reasons about (Intel VT-d rev 3.x/4.x
//! chapters 6.5 and 11): the capability registers it checks before taking the unit, the 256-bit
//! invalidation descriptors it queues, and the fault records it reads back.
//!
//! The registers themselves are the platform's ([`crate::platform::DmaRemapping`]); what is
//! written into them, and in which order, is decided here and in [`super::Iommu`].

use super::{DomainId, SeptLevels};

/// CAP_REG and ECAP_REG of the unit (VT-d §11.4.2, §11.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// CAP_REG.
    pub cap: u64,
    /// ECAP_REG.
    pub ecap: u64,
}

/// Why the TSM will not take a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsuitable {
    /// ECAP.QI clear: no queued invalidation, so no wait descriptor to prove completion.
    NoQueuedInvalidation,
    /// ECAP.SMTS clear: no scalable-mode translation (no PASID tables).
    NoScalableMode,
    /// ECAP.SLTS clear: no second-stage translation, so the S-EPT cannot be its table.
    NoSecondStage,
    /// CAP.SAGAW has neither 4-level (48-bit) nor 5-level (57-bit) second-stage tables.
    NoUsableWidth,
}

impl Capabilities {
    /// CAP.SAGAW (bits 12:8): bit 1 = 39-bit 3-level, bit 2 = 48-bit 4-level, bit 3 = 57-bit
    /// 5-level tables.
    pub const fn sagaw(self) -> u8 {
        ((self.cap >> 8) & 0x1F) as u8
    }

    /// True if the unit walks second-stage tables as deep as an S-EPT of `levels`.
    pub const fn walks(self, levels: SeptLevels) -> bool {
        let bit = match levels {
            SeptLevels::Four => 1 << 2,
            SeptLevels::Five => 1 << 3,
        };
        self.sagaw() & bit != 0
    }

    /// CAP.ND (bits 2:0): the unit has 2^(4 + 2 * ND) domain ids.
    pub const fn domains(self) -> u32 {
        1 << (4 + 2 * (self.cap & 7))
    }

    /// CAP.FRO (bits 33:24): offset of the first fault recording register, in 16-byte units.
    pub const fn fault_record_offset(self) -> u64 {
        ((self.cap >> 24) & 0x3FF) * 16
    }

    /// CAP.NFR (bits 47:40) + 1: the number of fault recording registers.
    pub const fn fault_records(self) -> u32 {
        ((self.cap >> 40) & 0xFF) as u32 + 1
    }

    /// Checks the unit can run the TSM's tables: queued invalidation, scalable mode, second-stage
    /// translation, and a 4- or 5-level width.
    ///
    /// # Errors
    /// The first missing capability.
    pub const fn check(self) -> Result<(), Unsuitable> {
        const QI: u64 = 1 << 1;
        const SMTS: u64 = 1 << 43;
        const SLTS: u64 = 1 << 46;
        if self.ecap & QI == 0 {
            return Err(Unsuitable::NoQueuedInvalidation);
        }
        if self.ecap & SMTS == 0 {
            return Err(Unsuitable::NoScalableMode);
        }
        if self.ecap & SLTS == 0 {
            return Err(Unsuitable::NoSecondStage);
        }
        if !self.walks(SeptLevels::Four) && !self.walks(SeptLevels::Five) {
            return Err(Unsuitable::NoUsableWidth);
        }
        Ok(())
    }
}

/// RTADDR_REG.TTM = 01b: the root table is a scalable-mode root table (§11.4.5).
pub const RTADDR_SCALABLE: u64 = 1 << 10;

/// One 256-bit invalidation descriptor (§6.5.2), as the four little-endian words the queue
/// holds. The TSM queues 256-bit descriptors (IQA_REG.DW = 1): scalable mode needs them for the
/// PASID-based ones, and a queue has one width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvDescriptor(pub [u64; 4]);

const TYPE_CONTEXT: u64 = 0x1;
const TYPE_IOTLB: u64 = 0x2;
const TYPE_WAIT: u64 = 0x5;
const TYPE_PASID_IOTLB: u64 = 0x6;
const TYPE_PASID_CACHE: u64 = 0x7;
const GRANULARITY_SHIFT: u32 = 4;
const DID_SHIFT: u32 = 16;
const PASID_SHIFT: u32 = 32;

impl InvDescriptor {
    const fn did(did: DomainId) -> u64 {
        (did.0 as u64) << DID_SHIFT
    }

    /// Context-cache invalidation, global (G = 01b, §6.5.2.1).
    pub const fn context_global() -> InvDescriptor {
        InvDescriptor([TYPE_CONTEXT | 1 << GRANULARITY_SHIFT, 0, 0, 0])
    }

    /// PASID-cache invalidation, domain-selective (G = 00b, §6.5.2.2). QEMU re-reads PASID
    /// entries at every IOTLB miss and accepts it as a no-op; hardware caches them.
    pub const fn pasid_cache_domain(did: DomainId) -> InvDescriptor {
        InvDescriptor([TYPE_PASID_CACHE | Self::did(did), 0, 0, 0])
    }

    /// PASID-cache invalidation, global (G = 11b).
    pub const fn pasid_cache_global() -> InvDescriptor {
        InvDescriptor([TYPE_PASID_CACHE | 3 << GRANULARITY_SHIFT, 0, 0, 0])
    }

    /// IOTLB invalidation, global (G = 01b, §6.5.2.3), draining reads and writes.
    pub const fn iotlb_global() -> InvDescriptor {
        InvDescriptor([TYPE_IOTLB | 1 << GRANULARITY_SHIFT | Self::DRAIN, 0, 0, 0])
    }

    /// IOTLB invalidation, domain-selective (G = 10b): every translation tagged `did`.
    pub const fn iotlb_domain(did: DomainId) -> InvDescriptor {
        InvDescriptor([TYPE_IOTLB | 2 << GRANULARITY_SHIFT | Self::DRAIN | Self::did(did), 0, 0, 0])
    }

    /// IOTLB invalidation, page-selective within domain (G = 11b): the 4 KiB page at `addr` of
    /// `did` (AM = 0, IH = 0). Needs CAP.PSI (QEMU's unit has it). The platform queues it for
    /// [`super::HOST_DID`] when a frame leaves the host map.
    pub const fn iotlb_page(did: DomainId, addr: u64) -> InvDescriptor {
        InvDescriptor([TYPE_IOTLB | 3 << GRANULARITY_SHIFT | Self::DRAIN | Self::did(did), addr & !0xFFF, 0, 0])
    }

    /// DR and DW (bits 7:6): pending DMA reads and writes drain before the invalidation completes.
    const DRAIN: u64 = 0b11 << 6;

    /// PASID-based IOTLB invalidation, all of one PASID in the domain (G = 00b, §6.5.2.4).
    pub const fn pasid_iotlb(did: DomainId, pasid: u32) -> InvDescriptor {
        InvDescriptor([TYPE_PASID_IOTLB | Self::did(did) | ((pasid as u64 & 0xF_FFFF) << PASID_SHIFT), 0, 0, 0])
    }

    /// Invalidation wait (§6.5.2.8) with status write (SW) and fence (FN): once every earlier
    /// descriptor completed, the unit writes `data` to the 4-byte-aligned `status_addr`.
    pub const fn wait(status_addr: u64, data: u32) -> InvDescriptor {
        const SW: u64 = 1 << 5;
        const FN: u64 = 1 << 6;
        InvDescriptor([TYPE_WAIT | SW | FN | (data as u64) << 32, status_addr & !3, 0, 0])
    }

    /// The descriptor type (bits 3:0).
    pub const fn kind(self) -> u8 {
        (self.0[0] & 0xF) as u8
    }

    /// For a wait descriptor with status write: where and what it writes.
    pub const fn status_write(self) -> Option<(u64, u32)> {
        if self.kind() == TYPE_WAIT as u8 && self.0[0] & (1 << 5) != 0 {
            Some((self.0[1], (self.0[0] >> 32) as u32))
        } else {
            None
        }
    }
}

/// The descriptors of one domain-selective invalidation (IQ.INV): the PASID cache and the IOTLB
/// of `did`. A wait descriptor follows them ([`super::Iommu::invalidate_unit`]).
pub const fn domain_invalidation(did: DomainId) -> [InvDescriptor; 2] {
    [InvDescriptor::pasid_cache_domain(did), InvDescriptor::iotlb_domain(did)]
}

/// The descriptors that make a newly pointed-to root table the only truth: context cache, PASID
/// cache and IOTLB, all global.
pub const GLOBAL_INVALIDATION: [InvDescriptor; 3] =
    [InvDescriptor::context_global(), InvDescriptor::pasid_cache_global(), InvDescriptor::iotlb_global()];

/// One fault the unit recorded (a fault recording register, §11.4.14), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultRecord {
    /// The requester id (SID) of the faulting request.
    pub source_id: u16,
    /// The page address (FI, bits 63:12 of the low word) the request went to.
    pub address: u64,
    /// The VT-d fault reason (FR).
    pub reason: u8,
    /// True for a write request (T = 0), false for a read.
    pub write: bool,
    /// The PASID, if the request carried one (PP).
    pub pasid: Option<u32>,
}

impl FaultRecord {
    /// Decodes a fault recording register (`lo` = bits 63:0, `hi` = bits 127:64); `None` if its
    /// F bit (127) is clear.
    pub const fn decode(lo: u64, hi: u64) -> Option<FaultRecord> {
        if hi >> 63 == 0 {
            return None;
        }
        // PP (bit 95) says PV (bits 123:104) holds the request's PASID.
        let pasid = if hi & (1 << 31) != 0 { Some(((hi >> 40) & 0xF_FFFF) as u32) } else { None };
        Some(FaultRecord {
            source_id: hi as u16,
            address: lo & !0xFFF,
            reason: (hi >> 32) as u8,
            // T1 (bit 126): 0 = write, 1 = page request / read.
            write: hi & (1 << 62) == 0,
            pasid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's intel-iommu, x-scalable-mode=on (`../shared/reference/prototypes/vtd/run1.log`).
    const QEMU: Capabilities = Capabilities { cap: 0x00d2_008c_222f_0606, ecap: 0x0000_4800_80f0_0f4a };

    #[test]
    fn qemus_unit_walks_four_levels_only() {
        assert_eq!(QEMU.check(), Ok(()));
        assert!(QEMU.walks(SeptLevels::Four));
        assert!(!QEMU.walks(SeptLevels::Five), "SAGAW {:#x}", QEMU.sagaw());
        assert_eq!(QEMU.fault_record_offset(), 0x220);
        assert_eq!(QEMU.fault_records(), 1);
        assert_eq!(QEMU.domains(), 1 << 16);
    }

    #[test]
    fn a_unit_without_scalable_mode_or_queue_is_refused() {
        let legacy = Capabilities { cap: QEMU.cap, ecap: 0xF42 & !(1 << 1) };
        assert_eq!(legacy.check(), Err(Unsuitable::NoQueuedInvalidation));
        let legacy = Capabilities { cap: QEMU.cap, ecap: 0xF42 };
        assert_eq!(legacy.check(), Err(Unsuitable::NoScalableMode));
    }

    #[test]
    fn descriptors_carry_type_granularity_and_did() {
        let d = InvDescriptor::iotlb_domain(DomainId(7));
        assert_eq!(d.0[0], 0x2 | 2 << 4 | 0b11 << 6 | 7 << 16);
        assert_eq!(InvDescriptor::context_global().0, [0x11, 0, 0, 0]);
        assert_eq!(InvDescriptor::pasid_iotlb(DomainId(1), 5).0[0], 0x6 | 1 << 16 | 5 << 32);
        let page = InvDescriptor::iotlb_page(DomainId(9), 0x1234_5678);
        assert_eq!(page.0, [0x2 | 3 << 4 | 0b11 << 6 | 9 << 16, 0x1234_5000, 0, 0]);
        let w = InvDescriptor::wait(0x1234_5678, 0xAB);
        assert_eq!(w.status_write(), Some((0x1234_5678, 0xAB)));
        assert_eq!(w.0[0] & 0xFF, 0x65);
    }

    #[test]
    fn fault_records_decode_as_qemu_writes_them() {
        // run1.log case 07: FR 0x05, SID 0x18, FI 0x200000000, a write.
        let hi = 1 << 63 | 0x05 << 32 | 0x18;
        let f = FaultRecord::decode(0x2_0000_0000, hi).unwrap();
        assert_eq!(f, FaultRecord { source_id: 0x18, address: 0x2_0000_0000, reason: 5, write: true, pasid: None });
        assert_eq!(FaultRecord::decode(0x2_0000_0000, hi & !(1 << 63)), None);
    }
}
