//! Host leaves that change a TD's memory: the S-EPT tables, pages, blocking and TLB tracking,
//! and the build-time measurement of added pages.

use crate::abi::{gpa_aligned, gpa_level, Regs};
use crate::addr::{GuestPhysAddr, PageSize, Pfn};
use crate::error::{SeptErrorKind, TsmError, TsmResult};
use crate::pamt::{PageType, PamtEntry};
use crate::platform::Platform;
use crate::sept::{self, legality, Legality, SeptEntry, SeptOp, SeptState, Walk};
use crate::status::{Operand, Status};
use crate::td::Lifecycle;
use crate::Tsm;

/// The highest level RCX may name before the TD's own root level is known.
const MAX_LEVEL: u8 = 4;

impl<P: Platform> Tsm<P> {
    /// Decodes RCX (GPA and level) and RDX (TDR); requires an initialized, live TD.
    pub(crate) fn mem_prologue(&self, regs: &Regs) -> TsmResult<(usize, GuestPhysAddr, u8)> {
        self.sys()?;
        let (gpa, level) = gpa_level(regs.rcx, MAX_LEVEL)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        Self::require_built(self.td(idx)?)?;
        Ok((idx, gpa, level))
    }

    /// Applies the legality table; `Ok(true)` means "already done" (a warning).
    pub(crate) fn legal(op: SeptOp, w: &Walk) -> TsmResult<bool> {
        match legality(op, w.entry.state()) {
            Legality::Proceed => Ok(false),
            Legality::AlreadyDone => Ok(true),
            Legality::Refuse(kind) => Err(TsmError::Sept(Operand::Rcx, w.fault(kind))),
            // Host operations never exit to a host; treat like a state error.
            Legality::ExitToHost => Err(TsmError::Sept(Operand::Rcx, w.fault(SeptErrorKind::StateIncorrect))),
        }
    }

    fn leaf_size_of(level: u8) -> TsmResult<PageSize> {
        PageSize::from_level(level).ok_or(TsmError::OperandInvalid(Operand::Rcx))
    }

    pub(crate) fn mem_page_add(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (gpa, level) = gpa_level(regs.rcx, 0)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Initialized)?;
        Self::private_gpa(td, gpa, PageSize::Size4K.bytes(), Operand::Rcx)?;
        let page = self.donated_page(regs.r8, Operand::R8)?;
        let source = Self::page_operand(regs.r9, Operand::R9)?;
        self.host_page(source, Operand::R9)?;
        if source == page {
            return Err(TsmError::OperandInvalid(Operand::R9));
        }
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::PageMap, &w)?;
        let owner = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.copy(page, source);
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::Mapped, page, 0));
        self.set_meta(page, PamtEntry::owned(PageType::Regular, owner));
        let td = self.td_mut(idx)?;
        td.owned_frames += 1;
        td.mrtd.page_add(gpa.raw());
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_sept_add(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let td = self.td(idx)?;
        if level == 0 || level > td.root_level() {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Self::private_gpa(td, gpa, sept::coverage(level), Operand::Rcx)?;
        let page = self.donated_page(regs.r8, Operand::R8)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::SeptAdd, &w)?;
        let owner = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::NlMapped, page, level));
        self.set_meta(page, PamtEntry::owned(PageType::Sept, owner));
        self.td_mut(idx)?.owned_frames += 1;
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_page_aug(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (gpa, level) = gpa_level(regs.rcx, 2)?;
        let size = Self::leaf_size_of(level)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Runnable)?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        let page = match size {
            PageSize::Size4K => self.donated_page(regs.r8, Operand::R8)?,
            _ => self.donated_block(regs.r8, size, Operand::R8)?,
        };
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::PageMap, &w)?;
        let owner = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::Pending, page, level));
        let entry = PamtEntry { level, ..PamtEntry::owned(PageType::Regular, owner) };
        match size {
            PageSize::Size4K => self.set_meta(page, entry),
            _ => self.set_meta_block(page, size, entry),
        }
        self.td_mut(idx)?.owned_frames += size.frames();
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_range_block(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let td = self.td(idx)?;
        if level > td.root_level() {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Self::private_gpa(td, gpa, sept::coverage(level), Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        out.rcx = w.entry.raw();
        out.rdx = w.fault(SeptErrorKind::StateIncorrect).level_state();
        if Self::legal(SeptOp::Block, &w)? {
            return Ok(Status::GPA_RANGE_ALREADY_BLOCKED);
        }
        let target = w.entry.pfn();
        let mut meta = self.pamt_of(target, Operand::Sept)?;
        let epoch = td.tlb.epoch();
        // ALL CHECKS PASSED: nothing below can fail.
        let (tdr, bytes) = (td.tdr, sept::coverage(level));
        let blocked = SeptEntry::new(w.entry.state().blocked(), target, level);
        sept::write(&mut self.platform, w.slot, blocked);
        self.platform.sept_changed(tdr, Some((gpa, bytes)));
        meta.bepoch = epoch;
        self.set_meta(target, meta);
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_track(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        Self::require_built(td)?;
        if !td.tlb.can_advance() {
            return Err(TsmError::PrevEpochBusy);
        }
        let tdr = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.td_mut(idx)?.tlb.advance();
        self.platform.sept_changed(tdr, None);
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_range_unblock(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let td = self.td(idx)?;
        if level > td.root_level() {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Self::private_gpa(td, gpa, sept::coverage(level), Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::Unblock, &w)?;
        self.require_tracked(td, &w, Operand::Rcx)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let entry = SeptEntry::new(w.entry.state().unblocked(), w.entry.pfn(), level);
        sept::write(&mut self.platform, w.slot, entry);
        out.rcx = entry.raw();
        out.rdx = w.fault(SeptErrorKind::StateIncorrect).level_state();
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_page_remove(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let size = Self::leaf_size_of(level)?;
        let td = self.td(idx)?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::PageRemove, &w)?;
        self.require_tracked(td, &w, Operand::Rcx)?;
        let page = w.entry.pfn();
        let tdr = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::FREE);
        self.platform.sept_changed(tdr, Some((gpa, size.bytes())));
        self.scrub(page, size.frames());
        self.set_meta_block(page, size, PamtEntry::FREE);
        let td = self.td_mut(idx)?;
        td.owned_frames = td.owned_frames.saturating_sub(size.frames());
        out.rcx = page.addr().raw();
        out.rdx = w.fault(SeptErrorKind::StateIncorrect).level_state();
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_page_demote(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        if level == 0 || level > 2 {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        let size = Self::leaf_size_of(level)?;
        let td = self.td(idx)?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        let table = self.donated_page(regs.r8, Operand::R8)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::Demote, &w)?;
        self.require_tracked(td, &w, Operand::Rcx)?;
        let owner = td.tdr;
        let child_level = level - 1;
        let child_frames = sept::coverage(child_level) >> 12;
        let child_state = w.entry.state().unblocked();
        let first = w.entry.pfn();
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(table);
        for i in 0..sept::ENTRIES {
            let pfn = first.checked_add(i as u64 * child_frames).unwrap_or(first);
            let e = SeptEntry::new(child_state, pfn, child_level);
            self.platform.write_u64(table, i, e.raw());
        }
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::NlMapped, table, level));
        self.platform.sept_changed(owner, Some((gpa, size.bytes())));
        self.set_meta(table, PamtEntry::owned(PageType::Sept, owner));
        let meta = PamtEntry { level: child_level, ..PamtEntry::owned(PageType::Regular, owner) };
        self.set_meta_block(first, size, meta);
        self.td_mut(idx)?.owned_frames += 1;
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_page_promote(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        if level == 0 || level > 2 {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        let size = Self::leaf_size_of(level)?;
        let td = self.td(idx)?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::Promote, &w)?;
        self.require_tracked(td, &w, Operand::Rcx)?;
        let table = w.entry.pfn();
        let (state, first) = self.promotable(table, level)?;
        let owner = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::new(state, first, level));
        self.platform.sept_changed(owner, Some((gpa, size.bytes())));
        self.platform.zero(table);
        self.set_meta(table, PamtEntry::FREE);
        let meta = PamtEntry { level, ..PamtEntry::owned(PageType::Regular, owner) };
        self.set_meta_block(first, size, meta);
        let td = self.td_mut(idx)?;
        td.owned_frames = td.owned_frames.saturating_sub(1);
        out.rcx = table.addr().raw();
        Ok(Status::SUCCESS)
    }

    /// Checks that a table holds 512 leaves of one unblocked state, contiguous from a frame
    /// aligned to the size of a leaf at `level`; returns that state and frame.
    fn promotable(&self, table: Pfn, level: u8) -> TsmResult<(SeptState, Pfn)> {
        let child_level = level - 1;
        let child_frames = sept::coverage(child_level) >> 12;
        let size = Self::leaf_size_of(level)?;
        let entry_at = |i: usize| SeptEntry::decode(self.platform.read_u64(table, i)).ok_or(TsmError::Corrupt);
        let bad = |i: usize, e: SeptEntry| {
            let w = Walk { level: child_level, slot: sept::Slot { table, index: i }, entry: e };
            TsmError::Sept(Operand::Rcx, w.fault(SeptErrorKind::InvalidPromote))
        };
        let e0 = entry_at(0)?;
        let state = e0.state();
        if !matches!(state, SeptState::Mapped | SeptState::Pending) || !e0.pfn().is_aligned(size) {
            return Err(bad(0, e0));
        }
        for i in 1..sept::ENTRIES {
            let e = entry_at(i)?;
            let expect = e0.pfn().checked_add(i as u64 * child_frames);
            if e.state() != state || Some(e.pfn()) != expect {
                return Err(bad(i, e));
            }
        }
        Ok((state, e0.pfn()))
    }

    pub(crate) fn mem_sept_remove(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let td = self.td(idx)?;
        if level == 0 || level > td.root_level() {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Self::private_gpa(td, gpa, sept::coverage(level), Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        Self::legal(SeptOp::SeptRemove, &w)?;
        self.require_tracked(td, &w, Operand::Rcx)?;
        let table = w.entry.pfn();
        if (0..sept::ENTRIES).any(|i| self.platform.read_u64(table, i) != 0) {
            return Err(TsmError::Sept(Operand::Rcx, w.fault(SeptErrorKind::TableNotEmpty)));
        }
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::FREE);
        self.platform.zero(table);
        self.set_meta(table, PamtEntry::FREE);
        let td = self.td_mut(idx)?;
        td.owned_frames = td.owned_frames.saturating_sub(1);
        out.rcx = table.addr().raw();
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mem_sept_rd(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (gpa, level) = gpa_level(regs.rcx, MAX_LEVEL)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        // Not in teardown either: RECLAIM may already have handed table pages back to the host,
        // and a walk must never follow a pointer the host could have written.
        Self::require_built(td)?;
        if level > td.root_level() {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Self::private_gpa(td, gpa, 1, Operand::Rcx)?;
        let w = self.walk_to(td, gpa, level, Operand::Rcx)?;
        out.rcx = w.entry.raw();
        out.rdx = w.fault(SeptErrorKind::StateIncorrect).level_state();
        Ok(Status::SUCCESS)
    }

    pub(crate) fn mr_extend(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let gpa = gpa_aligned(regs.rcx, 256, Operand::Rcx)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Initialized)?;
        Self::private_gpa(td, gpa, 256, Operand::Rcx)?;
        let w = self.walk_to(td, gpa.align_down(PageSize::Size4K), 0, Operand::Rcx)?;
        Self::legal(SeptOp::MrExtend, &w)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let mut chunk = [0u8; 256];
        self.platform.read_bytes(w.entry.pfn(), gpa.page_offset() as usize, &mut chunk);
        self.td_mut(idx)?.mrtd.extend_chunk(gpa.raw(), &chunk);
        Ok(Status::SUCCESS)
    }
}
