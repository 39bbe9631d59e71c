//! A model of the VT-d remapping unit's registers for the host platform: it keeps what the TSM
//! programmed (RTADDR, queue, translation), executes the invalidation queue the way QEMU's
//! intel-iommu does (in order, a wait descriptor writes its status when reached), and can be
//! told to misbehave (an absent unit, a queue error, a status write that never comes) so that
//! tests see the TSM refuse to retire anything it has no proof for.

use tsm::iommu::hw::{Capabilities, InvDescriptor};
use tsm::platform::UnitError;

/// QEMU's `intel-iommu,x-scalable-mode=on` as measured (`../shared/reference/prototypes/vtd`).
pub const QEMU_CAPABILITIES: Capabilities = Capabilities { cap: 0x00d2_008c_222f_0606, ecap: 0x0000_4800_80f0_0f4a };

/// How the model unit misbehaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnitFault {
    /// It behaves.
    #[default]
    None,
    /// The queue reports an error at the next submission (FSTS.IQE).
    QueueError,
    /// The queue drains but wait descriptors never write their status.
    NoStatusWrite,
}

/// The model unit.
#[derive(Clone, Debug)]
pub struct ModelUnit {
    /// CAP and ECAP; `None` for a platform without a unit.
    pub caps: Option<Capabilities>,
    /// RTADDR as latched by SRTP.
    pub rtaddr: Option<u64>,
    /// GSTS.QIES.
    pub queue_enabled: bool,
    /// GSTS.TES.
    pub translating: bool,
    /// Every descriptor the unit executed, in order.
    pub executed: Vec<InvDescriptor>,
    /// The wait status word.
    pub status: u32,
    /// Recorded faults, `(low, high)` fault recording register words, oldest first.
    pub faults: Vec<(u64, u64)>,
    /// The next misbehaviour.
    pub fault: UnitFault,
}

impl Default for ModelUnit {
    fn default() -> ModelUnit {
        ModelUnit {
            caps: Some(QEMU_CAPABILITIES),
            rtaddr: None,
            queue_enabled: false,
            translating: false,
            executed: Vec::new(),
            status: 0,
            faults: Vec::new(),
            fault: UnitFault::None,
        }
    }
}

/// Where the model's status word "is": any 4-byte-aligned address works, the model checks the
/// wait descriptors name it.
pub const STATUS_ADDRESS: u64 = 0xFED0_0000;

impl ModelUnit {
    fn present(&self) -> Result<(), UnitError> {
        self.caps.map(|_| ()).ok_or(UnitError::Absent)
    }

    pub(crate) fn set_root_table(&mut self, rtaddr: u64) -> Result<(), UnitError> {
        self.present()?;
        self.rtaddr = Some(rtaddr);
        Ok(())
    }

    pub(crate) fn enable_queue(&mut self) -> Result<(), UnitError> {
        self.present()?;
        self.queue_enabled = true;
        Ok(())
    }

    pub(crate) fn submit(&mut self, descriptors: &[InvDescriptor]) -> Result<(), UnitError> {
        self.present()?;
        assert!(self.queue_enabled, "the TSM queued descriptors before enabling the queue");
        if self.fault == UnitFault::QueueError {
            return Err(UnitError::QueueError);
        }
        for d in descriptors {
            self.executed.push(*d);
            if let Some((addr, data)) = d.status_write() {
                assert_eq!(addr, STATUS_ADDRESS, "a wait descriptor writes elsewhere than the status word");
                if self.fault != UnitFault::NoStatusWrite {
                    self.status = data;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn set_translation(&mut self, enabled: bool) -> Result<(), UnitError> {
        self.present()?;
        assert!(!enabled || self.rtaddr.is_some(), "translation enabled without a root table");
        self.translating = enabled;
        Ok(())
    }

    pub(crate) fn take_fault(&mut self) -> Option<(u64, u64)> {
        if self.faults.is_empty() {
            None
        } else {
            Some(self.faults.remove(0))
        }
    }

    /// Records a fault as the unit would: `reason` for `source_id` writing `address`.
    pub fn record_fault(&mut self, source_id: u16, address: u64, reason: u8) {
        self.faults.push((address & !0xFFF, 1 << 63 | u64::from(reason) << 32 | u64::from(source_id)));
    }
}
