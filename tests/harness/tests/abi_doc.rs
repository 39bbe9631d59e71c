//! `docs/abi.md` is generated from the ABI tables in the code; this test fails when the two
//! differ. Regenerate with `SEAMLESS_BLESS=1 cargo test -p seamless-harness --test abi_doc`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write;

use seamless_harness::HostPlatform;
use tsm::abi::LeafSpec;
use tsm::{Status, Tsm};

fn render_leaf(out: &mut String, s: &LeafSpec) {
    let _ = writeln!(out, "### {} (leaf {:#x})\n", s.name, s.number);
    let _ = writeln!(out, "{}\n", s.summary);
    let _ = writeln!(out, "Requires: {}\n", s.requires);
    let regs = |out: &mut String, title: &str, list: &[(tsm::abi::Reg, &str)]| {
        if list.is_empty() {
            let _ = writeln!(out, "{title}: none.\n");
        } else {
            let _ = writeln!(out, "| {title} | |\n|---|---|");
            for (r, d) in list {
                let _ = writeln!(out, "| {} | {} |", r.name(), d);
            }
            out.push('\n');
        }
    };
    regs(out, "Inputs", s.inputs);
    regs(out, "Outputs", s.outputs);
    if !s.errors.is_empty() {
        let _ = writeln!(out, "| Checks, in order | Status | Value |\n|---|---|---|");
        for (st, why) in s.errors {
            let _ = writeln!(out, "| {} | {} | `{:#018x}` |", why, st.name().unwrap_or("?"), st.0);
        }
        out.push('\n');
    }
}

fn render() -> String {
    let mut out = String::new();
    out.push_str(include_str!("abi_preamble.md"));
    out.push_str("\n## Status codes\n\n| Name | Value | Error | Retry can succeed |\n|---|---|---|---|\n");
    for (name, st) in Status::ALL {
        let _ = writeln!(
            out,
            "| {name} | `{:#018x}` | {} | {} |",
            st.0,
            if st.is_error() { "yes" } else { "no" },
            if st.is_non_recoverable() { "no" } else { "yes" }
        );
    }
    out.push_str("\n## Host ABI (SEAMCALL-shaped)\n\n");
    for l in Tsm::<HostPlatform>::HOST_LEAVES {
        render_leaf(&mut out, &l.spec);
    }
    out.push_str("## Guest ABI (TDCALL-shaped)\n\n");
    out.push_str("Every guest leaf first checks that the calling vCPU is in guest mode (`VCPU_NOT_IN_GUEST`).\n\n");
    for l in Tsm::<HostPlatform>::GUEST_LEAVES {
        render_leaf(&mut out, &l.spec);
    }
    render_requests(&mut out);
    out
}

/// The demo TD's protocol with its host (`tsm_client::vmcall`), from the same table both sides
/// use.
fn render_requests(out: &mut String) {
    out.push_str("## The demo TD's requests to its host (TDG.VP.VMCALL, `tsm_client::vmcall`)\n\n");
    out.push_str(
        "Vendor-specific TDVMCALLs (GHCI: R10 != 0): R10 the request, R11 and R13 its arguments, R12 the \
         guest's shared page (a GPA with the shared bit set; the host refuses any other). The host \
         serves it, writes what it hands over into the shared page (`[length: u64 LE][data]`) and \
         resumes the vCPU with R10 = 0, or GHCI's INVALID_OPERAND (`0x8000000000000000`) if it \
         refuses. Each side treats what it reads there as hostile.\n\n",
    );
    out.push_str("| R10 | Request | Guest passes | Host does | Shared page then holds |\n|---|---|---|---|---|\n");
    for r in tsm_client::vmcall::REQUESTS {
        let _ = writeln!(out, "| `{:#x}` | {} | {} | {} | {} |", r.number, r.name, r.guest, r.host, r.answer);
    }
    out.push('\n');
}

#[test]
fn abi_doc_matches_the_tables() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/abi.md");
    let want = render();
    if std::env::var_os("SEAMLESS_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(have == want, "docs/abi.md is stale: run SEAMLESS_BLESS=1 cargo test -p seamless-harness --test abi_doc");
}

#[test]
fn tables_are_sorted_unique_and_name_known_statuses() {
    for table in [
        Tsm::<HostPlatform>::HOST_LEAVES.iter().map(|l| l.spec).collect::<Vec<_>>(),
        Tsm::<HostPlatform>::GUEST_LEAVES.iter().map(|l| l.spec).collect::<Vec<_>>(),
    ] {
        assert!(table.windows(2).all(|w| w[0].number < w[1].number), "sorted, unique numbers");
        for s in &table {
            for (st, _) in s.errors {
                assert!(st.name().is_some(), "{}: unknown status", s.name);
            }
        }
    }
}
