//! The virtual x2APIC of a TD vCPU: the registers TDX's APIC virtualization keeps inside the TD
//! (TPR, PPR, EOI, ISR, TMR, IRR, SELF_IPI), so that the host never sees which interrupt the TD
//! is serving and never reaches the machine's real APIC through the TD. The rest of the x2APIC
//! (ID, version, SVR, the LVT, the timer, ICR) is the host's to emulate: the TD reaches it
//! with TDG.VP.VMCALL<RDMSR/WRMSR> (edk2's `AccessMsrTdxCall` sends exactly those out), as in
//! TDX.
//!
//! Interrupts arrive from the host as posted vectors (SEAMLESS.VP.POST, TDX's posted-interrupt
//! descriptor in spirit): they land in the IRR; the platform running the vCPU injects the
//! highest one whose priority class is above the PPR ([`VirtualApic::deliverable`]) when the vCPU
//! can take it, which moves it to the ISR ([`VirtualApic::accept`]), as the CPU's interrupt
//! acknowledge does; the TD's EOI clears the highest ISR bit. Intel SDM vol. 3 §11.8 (the
//! IRR/ISR/TPR/PPR rules) and §11.12 (x2APIC MSRs).
//!
//! The state lives in the vCPU's TDVPR page ([`VirtualApic::BYTES`] at its start), as TDX keeps
//! the virtual APIC page in the TDVPS.

/// IA32_APIC_BASE.
pub const APIC_BASE: u32 = 0x1B;
/// x2APIC task priority register.
pub const TPR: u32 = 0x808;
/// x2APIC processor priority register (read-only).
pub const PPR: u32 = 0x80A;
/// x2APIC end of interrupt (write-only).
pub const EOI: u32 = 0x80B;
/// x2APIC in-service register, bits 31:0 (ISR0); 0x811..0x817 follow.
pub const ISR0: u32 = 0x810;
/// x2APIC trigger mode register, bits 31:0; 0x819..0x81F follow.
pub const TMR0: u32 = 0x818;
/// x2APIC interrupt request register, bits 31:0; 0x821..0x827 follow.
pub const IRR0: u32 = 0x820;
/// x2APIC self IPI (write-only): the vector in bits 7:0.
pub const SELF_IPI: u32 = 0x83F;

/// What IA32_APIC_BASE reads in a TD: the architectural base 0xFEE00000, EN (bit 11) and EXTD
/// (bit 10), x2APIC mode as TDX fixes it, and BSP (bit 8) for vCPU 0.
pub const fn apic_base(vcpu_index: usize) -> u64 {
    0xFEE0_0000 | 1 << 11 | 1 << 10 | if vcpu_index == 0 { 1 << 8 } else { 0 }
}

/// Why a write to a register of the virtual APIC is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The register is read-only (PPR, ISR, TMR, IRR) or write-only and was read (EOI,
    /// SELF_IPI), or it is not one of the virtual APIC's.
    NotAccessible,
    /// Reserved bits set: TPR above 255, EOI not 0, a SELF_IPI vector below 16.
    Reserved,
}

/// The virtual APIC's state: 256-bit IRR, ISR and TMR, and the TPR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtualApic {
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    tpr: u8,
}

fn set(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] |= 1 << (vector & 31);
}

fn clear(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] &= !(1 << (vector & 31));
}

fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| bits[i] != 0).map(|i| (i as u32 * 32 + 31 - bits[i].leading_zeros()) as u8)
}

fn word(msr: u32, first: u32) -> Option<usize> {
    msr.checked_sub(first).filter(|&i| i < 8).map(|i| i as usize)
}

impl VirtualApic {
    /// Bytes of the encoded state.
    pub const BYTES: usize = 3 * 32 + 1;

    /// Vectors 0..15 are exceptions: no interrupt may carry them.
    pub const FIRST_VECTOR: u8 = 16;

    /// The state from its encoding (IRR, ISR, TMR as 8 little-endian words each, then TPR).
    pub fn decode(b: &[u8; Self::BYTES]) -> VirtualApic {
        let mut a = VirtualApic::default();
        for (i, w) in b[..96].chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            match i / 8 {
                0 => a.irr[i % 8] = v,
                1 => a.isr[i % 8] = v,
                _ => a.tmr[i % 8] = v,
            }
        }
        a.tpr = b[96];
        a
    }

    /// The encoding [`VirtualApic::decode`] reads.
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        for (i, v) in self.irr.iter().chain(&self.isr).chain(&self.tmr).enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[96] = self.tpr;
        b
    }

    /// Records `vector` as requested (IRR). Vectors below 16 are ignored: the caller refuses
    /// them first.
    pub fn post(&mut self, vector: u8) {
        if vector >= Self::FIRST_VECTOR {
            set(&mut self.irr, vector);
        }
    }

    /// True if `vector` is requested already (its IRR bit is set).
    pub fn requested(&self, vector: u8) -> bool {
        self.irr[usize::from(vector >> 5)] & 1 << (vector & 31) != 0
    }

    /// PPR (SDM §11.8.3.1): the TPR if its class is at least the class of the highest vector in
    /// service, else that class.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The interrupt the vCPU would take now: the highest requested vector whose priority class
    /// is above the PPR's (SDM §11.8.3).
    pub fn deliverable(&self) -> Option<u8> {
        highest(&self.irr).filter(|v| v >> 4 > self.ppr() >> 4)
    }

    /// The vCPU took `vector` (the platform injected it): IRR to ISR.
    pub fn accept(&mut self, vector: u8) {
        clear(&mut self.irr, vector);
        set(&mut self.isr, vector);
    }

    /// End of interrupt: the highest vector in service is done.
    pub fn eoi(&mut self) {
        if let Some(v) = highest(&self.isr) {
            clear(&mut self.isr, v);
            clear(&mut self.tmr, v);
        }
    }

    /// True if `msr` is one of the registers the virtual APIC keeps.
    pub fn owns(msr: u32) -> bool {
        matches!(msr, TPR | PPR | EOI | SELF_IPI) || (ISR0..IRR0 + 8).contains(&msr)
    }

    /// RDMSR of `msr`.
    ///
    /// # Errors
    /// [`ApicError::NotAccessible`] for EOI, SELF_IPI and any MSR it does not keep.
    pub fn read(&self, msr: u32) -> Result<u64, ApicError> {
        let v = match msr {
            TPR => u32::from(self.tpr),
            PPR => u32::from(self.ppr()),
            _ => {
                if let Some(i) = word(msr, ISR0) {
                    self.isr[i]
                } else if let Some(i) = word(msr, TMR0) {
                    self.tmr[i]
                } else if let Some(i) = word(msr, IRR0) {
                    self.irr[i]
                } else {
                    return Err(ApicError::NotAccessible);
                }
            }
        };
        Ok(u64::from(v))
    }

    /// WRMSR of `msr` with `value`; a refused write changes nothing.
    ///
    /// # Errors
    /// [`ApicError::Reserved`] for reserved bits (x2APIC raises #GP for them),
    /// [`ApicError::NotAccessible`] for a read-only register or one it does not keep.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), ApicError> {
        match msr {
            TPR if value > 0xFF => Err(ApicError::Reserved),
            TPR => {
                self.tpr = value as u8;
                Ok(())
            }
            EOI if value != 0 => Err(ApicError::Reserved),
            EOI => {
                self.eoi();
                Ok(())
            }
            SELF_IPI if value > 0xFF || value < u64::from(Self::FIRST_VECTOR) => Err(ApicError::Reserved),
            SELF_IPI => {
                self.post(value as u8);
                Ok(())
            }
            _ => Err(ApicError::NotAccessible),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliverable_rejects_a_vector_not_above_the_ppr() {
        let mut a = VirtualApic::default();
        assert_eq!(a.deliverable(), None, "nothing requested");
        a.write(TPR, 0x30).unwrap();
        a.post(0x3F);
        assert_eq!(a.deliverable(), None, "class 3 is not above TPR class 3");
        a.post(0x40);
        assert_eq!(a.deliverable(), Some(0x40));
        a.accept(0x40);
        assert_eq!(a.ppr(), 0x40, "PPR follows the vector in service");
        a.post(0x45);
        assert_eq!(a.deliverable(), None, "same class as the one in service");
        a.post(0x50);
        assert_eq!(a.deliverable(), Some(0x50), "a higher class preempts");
    }

    #[test]
    fn post_rejects_exception_vectors() {
        let mut a = VirtualApic::default();
        a.post(15);
        assert_eq!(a, VirtualApic::default());
        assert_eq!(a.write(SELF_IPI, 15), Err(ApicError::Reserved));
        assert_eq!(a.write(SELF_IPI, 0x100), Err(ApicError::Reserved));
        assert_eq!(a, VirtualApic::default(), "a refused write changes nothing");
    }

    #[test]
    fn write_rejects_reserved_bits_and_read_only_registers() {
        let mut a = VirtualApic::default();
        a.post(0x20);
        a.accept(0x20);
        let before = a;
        assert_eq!(a.write(TPR, 0x100), Err(ApicError::Reserved));
        assert_eq!(a.write(EOI, 1), Err(ApicError::Reserved));
        for msr in [PPR, ISR0, ISR0 + 7, TMR0, IRR0 + 3, 0x802, 0x832] {
            assert_eq!(a.write(msr, 0), Err(ApicError::NotAccessible), "{msr:#x}");
        }
        assert_eq!(a, before);
        for msr in [EOI, SELF_IPI, 0x802, APIC_BASE] {
            assert_eq!(a.read(msr), Err(ApicError::NotAccessible), "{msr:#x}");
        }
    }

    #[test]
    fn eoi_happy_path_ends_the_highest_vector_in_service() {
        let mut a = VirtualApic::default();
        for v in [0x20, 0x31, 0xFE] {
            a.post(v);
        }
        assert_eq!(a.read(IRR0 + 1).unwrap(), 1 | 1 << 17, "0x20 and 0x31 are bits 0 and 17 of IRR word 1");
        assert_eq!(a.read(IRR0 + 7).unwrap(), 1 << 30);
        let taken = a.deliverable().unwrap();
        assert_eq!(taken, 0xFE);
        a.accept(taken);
        assert_eq!((a.read(ISR0 + 7).unwrap(), a.read(IRR0 + 7).unwrap()), (1 << 30, 0));
        assert_eq!(a.deliverable(), None, "0x31 waits for the EOI of class 0xF");
        a.write(EOI, 0).unwrap();
        assert_eq!(a.read(PPR).unwrap(), 0);
        assert_eq!(a.deliverable(), Some(0x31));
        a.accept(0x31);
        assert_eq!(a.deliverable(), None, "0x20 is below the class in service");
        // 0x20 in service under 0x31 (as if 0x31 had interrupted its handler).
        a.accept(0x20);
        a.write(EOI, 0).unwrap();
        assert_eq!(a.read(ISR0 + 1).unwrap(), 1, "the EOI ended 0x31, not 0x20");
    }

    #[test]
    fn encode_round_trips() {
        let mut a = VirtualApic::default();
        a.post(0x20);
        a.post(0xEF);
        a.accept(0xEF);
        a.write(TPR, 0x10).unwrap();
        assert_eq!(VirtualApic::decode(&a.encode()), a);
        assert_eq!(VirtualApic::decode(&[0; VirtualApic::BYTES]), VirtualApic::default());
    }

    #[test]
    fn apic_base_reads_enabled_x2apic() {
        assert_eq!(apic_base(0), 0xFEE0_0D00);
        assert_eq!(apic_base(1), 0xFEE0_0C00);
        assert!(VirtualApic::owns(EOI) && VirtualApic::owns(IRR0 + 7) && VirtualApic::owns(TPR));
        assert!(!VirtualApic::owns(0x832) && !VirtualApic::owns(IRR0 + 8) && !VirtualApic::owns(APIC_BASE));
    }
}
