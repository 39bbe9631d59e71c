//! `attest show`: a report, a bundle and/or an SNP export, for people or as JSON. A bundle that
//! does not parse is shown up to its first error, and the error is the exit status 2.

use attest::eventlog::spdm::{Payload, SpdmEvent};
use attest::eventlog::{self, Event, EventLog, EventLogError, SpecId};
use attest::evidence::{self, Evidence};
use attest::host::hex;
use attest::report::{FunctionId, Report};
use attest::snp::SnpReport;
use serde_json::{json, Value};

use crate::args::Args;
use crate::{read, read_report, Outcome, Unusable};

fn report_json(r: &Report) -> Value {
    let devices: Vec<Value> = r
        .devices()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let a = d.algorithms();
            json!({
                "index": i,
                "function_id": d.function_id().to_string(),
                "tdi_state": d.tdi_state().map(|s| s.name()).unwrap_or("?"),
                "spdm_version": format!("{}.{}", d.spdm_version >> 4, d.spdm_version & 0xf),
                "lock_flags": format!("{:#x}", d.lock_flags()),
                "algorithms": {
                    "base_asym": format!("{:#x}", a.base_asym), "base_hash": format!("{:#x}", a.base_hash),
                    "measurement_hash": format!("{:#x}", a.measurement_hash), "dhe": format!("{:#x}", a.dhe),
                    "aead": format!("{:#x}", a.aead), "key_schedule": format!("{:#x}", a.key_schedule),
                    "measurement_spec": format!("{:#x}", a.measurement_spec),
                },
                "cert_chain_sha384": hex::encode(&d.cert_chain_sha384),
                "measurements_transcript_sha384": hex::encode(&d.measurements_transcript_sha384),
                "interface_report_sha384": hex::encode(&d.interface_report_sha384),
            })
        })
        .collect();
    json!({
        "version": r.header.version(),
        "flavour": r.header.flavour(),
        "digest": hex::encode(&r.digest()),
        "tsm": { "svn": r.tsm.svn(), "mrseam": hex::encode(&r.tsm.mr_seam) },
        "td": {
            "mrtd": hex::encode(&r.td.mr_td),
            "rtmr": r.td.rtmr.iter().map(|x| hex::encode(x)).collect::<Vec<_>>(),
            "attributes": format!("{:#x}", r.td.attributes()),
            "xfam": format!("{:#x}", r.td.xfam()),
        },
        "report_data": hex::encode(&r.report_data),
        "devices": devices,
        "signature": hex::encode(&r.signature),
    })
}

fn snp_json(s: &SnpReport) -> Value {
    json!({
        "version": u32::from_le_bytes(s.version),
        "policy": format!("{:#x}", u64::from_le_bytes(s.policy)),
        "signature_algo": u32::from_le_bytes(s.signature_algo),
        "report_data": hex::encode(&s.report_data),
        "measurement": hex::encode(&s.measurement),
        "reported_tcb": hex::encode(&s.reported_tcb),
        "cpuid": hex::encode(&s.cpuid),
        "chip_id": hex::encode(&s.chip_id),
        "signature_r": hex::encode(&s.signature_r[..48]),
        "signature_s": hex::encode(&s.signature_s[..48]),
    })
}

/// An SPDM device event as the firmware logged it: what it carries and for which function.
fn spdm_json(e: &Event<'_>) -> Value {
    let event = match SpdmEvent::parse(e.event_type, e.data) {
        Ok(event) => event,
        Err(err) => return json!({ "error": err.to_string() }),
    };
    let function = match u32::try_from(event.function_id) {
        Ok(id) => format!("{} ({:#010x})", FunctionId(id), id),
        Err(_) => format!("{:#x}", event.function_id),
    };
    let p = &event.pci;
    let mut v = json!({
        "function_id": function,
        "carries": event.payload.name(),
        "pci": {
            "vendor_id": format!("{:#06x}", p.vendor_id), "device_id": format!("{:#06x}", p.device_id),
            "revision_id": format!("{:#04x}", p.revision_id), "class_code": hex::encode(&p.class_code),
            "subsystem_vendor_id": format!("{:#06x}", p.subsystem_vendor_id),
            "subsystem_id": format!("{:#06x}", p.subsystem_id),
        },
    });
    let extra = match event.payload {
        Payload::CertChain { slot, digest } => json!({
            "spdm_version": format!("{}.{}", event.spdm_version >> 4, event.spdm_version & 0xf),
            "slot": slot, "cert_chain_sha384": hex::encode(&digest),
        }),
        Payload::Measurements { digest } => json!({
            "spdm_version": format!("{}.{}", event.spdm_version >> 4, event.spdm_version & 0xf),
            "measurements_transcript_sha384": hex::encode(&digest),
        }),
        Payload::InterfaceReport(bytes) => json!({
            "interface_report_bytes": bytes.len(), "interface_report_sha384": hex::encode(&evidence::sha384(bytes)),
        }),
    };
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    v
}

fn event_json(e: &Event<'_>) -> Value {
    let kind = eventlog::event_type_name(e.event_type).map_or_else(|| format!("{:#010x}", e.event_type), str::to_owned);
    let mut v = json!({
        "offset": e.offset,
        "mr_index": e.mr_index,
        "register": if e.rtmr().is_some() { eventlog::mr_name(e.mr_index) } else { "none (not extended)" },
        "type": kind,
        "digest": hex::encode(&e.digest),
        "data_bytes": e.data.len(),
    });
    if let Value::Object(m) = &mut v {
        if e.is_spdm() {
            m.insert("spdm".into(), spdm_json(e));
        } else if e.data.len() <= 64 {
            m.insert("data".into(), Value::String(hex::encode(e.data)));
        }
    }
    v
}

/// The log's events up to the first error, and that error.
fn event_log_json(bytes: &[u8]) -> Result<(Value, Option<EventLogError>), EventLogError> {
    let (spec, walk): (SpecId<'_>, _) = EventLog::raw_events(bytes)?;
    let mut events = Vec::new();
    let mut error = None;
    for e in walk {
        match e {
            Ok(e) => events.push(event_json(&e)),
            Err(err) => {
                error = Some(err);
                break;
            }
        }
    }
    let mut v = json!({
        "spec_id": {
            "pcr_index": spec.pcr_index, "platform_class": spec.platform_class, "spec_errata": spec.spec_errata,
            "uintn_size": spec.uintn_size, "vendor_info": hex::encode(spec.vendor_info),
        },
        "events": events,
    });
    if let (Ok(log), Value::Object(m)) = (EventLog::parse(bytes), &mut v) {
        m.insert("used_bytes".into(), json!(log.used_len()));
        m.insert("fill_bytes".into(), json!(log.fill_len()));
        let replay = log.replay();
        let rtmrs: Vec<Value> = replay.rtmr.iter().map(|r| Value::String(hex::encode(r))).collect();
        m.insert("replayed_rtmr".into(), Value::Array(rtmrs));
    }
    Ok((v, error))
}

fn print_tree(v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Object(_) | Value::Array(_) => {
                        outln!("{pad}{k}:");
                        print_tree(x, indent + 2);
                    }
                    _ => outln!("{pad}{k}: {}", scalar(x)),
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                match x {
                    Value::Object(_) | Value::Array(_) => {
                        outln!("{pad}[{i}]");
                        print_tree(x, indent + 2);
                    }
                    _ => outln!("{pad}[{i}] {}", scalar(x)),
                }
            }
        }
        _ => outln!("{pad}{}", scalar(v)),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn cmd_show(mut a: Args) -> Result<Outcome, Unusable> {
    let report_path = a.value("--report")?;
    let evidence_path = a.value("--evidence")?;
    let snp_path = a.value("--snp")?;
    let event_log_path = a.value("--event-log")?;
    let json_out = a.flag("--json");
    a.finish()?;
    if report_path.is_none() && evidence_path.is_none() && snp_path.is_none() && event_log_path.is_none() {
        return Err("show: give --report, --evidence, --snp and/or --event-log".into());
    }
    let mut out = serde_json::Map::new();
    let mut error = None;
    if let Some(p) = &report_path {
        out.insert("report".into(), report_json(&read_report(p)?));
    }
    if let Some(p) = &snp_path {
        let bytes = read(p, "SNP report")?;
        let s = SnpReport::read_from(&bytes).map_err(|n| format!("SNP report {p}: must be 1184 bytes, got {n}"))?;
        out.insert("snp".into(), snp_json(&s));
    }
    if let Some(p) = &evidence_path {
        let bytes = read(p, "evidence")?;
        let walk = Evidence::raw_records(&bytes).map_err(|e| format!("evidence {p}: {e}"))?;
        let mut records = Vec::new();
        for r in walk {
            match r {
                Ok(r) => records.push(json!({
                    "type": r.kind.name(), "device": r.device, "length": r.data.len(),
                    "sha384": hex::encode(&evidence::sha384(r.data)),
                })),
                Err(e) => {
                    error = Some(format!("evidence {p}: {e} (records before it shown)"));
                    break;
                }
            }
        }
        out.insert("evidence".into(), json!({ "records": records }));
    }
    if let Some(p) = &event_log_path {
        let bytes = read(p, "event log")?;
        let (v, err) = event_log_json(&bytes).map_err(|e| format!("event log {p}: {e}"))?;
        out.insert("event_log".into(), v);
        if let Some(e) = err {
            error = error.or(Some(format!("event log {p}: {e} (events before it shown)")));
        }
    }
    let v = Value::Object(out);
    if json_out {
        outln!("{v:#}");
    } else {
        print_tree(&v, 0);
    }
    match error {
        Some(e) => Err(e),
        None => Ok(Outcome::Done),
    }
}
