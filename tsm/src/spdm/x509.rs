//! The fields of an X.509 v3 certificate (RFC 5280 §4.1) that certificate path validation of an
//! SPDM chain needs, read in place from the DER without a heap: the signed part and its
//! signature, the names, the validity, the key, and the two extensions path validation
//! understands (basicConstraints, keyUsage). The rules themselves are in [`super::chain`].

use der::asn1::{AnyRef, BitStringRef, GeneralizedTime, UtcTime};
use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};

/// id-ce-basicConstraints (2.5.29.19), as OBJECT IDENTIFIER contents.
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1D, 0x13];
/// id-ce-keyUsage (2.5.29.15).
const KEY_USAGE: &[u8] = &[0x55, 0x1D, 0x0F];

/// keyUsage bits (RFC 5280 §4.2.1.3).
pub(crate) const DIGITAL_SIGNATURE: usize = 0;
/// keyUsage keyCertSign.
pub(crate) const KEY_CERT_SIGN: usize = 5;

/// basicConstraints (RFC 5280 §4.2.1.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BasicConstraints {
    /// cA.
    pub ca: bool,
    /// pathLenConstraint.
    pub path_len: Option<u8>,
}

/// The extensions as path validation sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// basicConstraints, if present.
    pub basic: Option<BasicConstraints>,
    /// keyUsage as its first 16 named bits (bit 0 = digitalSignature first), if present.
    pub key_usage: Option<u16>,
    /// An extension other than these two is marked critical.
    pub unknown_critical: bool,
    /// An extension appears twice (RFC 5280 §4.2: "MUST NOT include more than one instance").
    pub duplicate: bool,
}

impl Extensions {
    /// Whether keyUsage is present and asserts `bit`.
    pub fn asserts(&self, bit: usize) -> bool {
        self.key_usage.is_some_and(|u| u & (0x8000 >> bit) != 0)
    }
}

/// One certificate's fields, borrowed from its DER.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    /// The encoded tbsCertificate: what the signature covers.
    pub tbs: &'a [u8],
    /// version: 0 for v1, 2 for v3.
    pub version: u8,
    /// tbsCertificate.signature, whole TLV.
    pub tbs_algorithm: &'a [u8],
    /// signatureAlgorithm, whole TLV.
    pub algorithm: &'a [u8],
    /// signatureAlgorithm's OID contents.
    pub algorithm_oid: &'a [u8],
    /// signatureValue's bytes (a DER ECDSA-Sig-Value).
    pub signature: &'a [u8],
    /// issuer, whole TLV (names chain by their DER, as RFC 5280 §7.1 allows for matching
    /// encodings).
    pub issuer: &'a [u8],
    /// subject, whole TLV.
    pub subject: &'a [u8],
    /// notBefore, Unix seconds.
    pub not_before: u64,
    /// notAfter, Unix seconds.
    pub not_after: u64,
    /// subjectPublicKeyInfo, whole TLV.
    pub spki: &'a [u8],
    /// The extensions path validation reads.
    pub extensions: Extensions,
}

const fn context(number: u32) -> Tag {
    Tag::ContextSpecific { constructed: true, number: TagNumber(number) }
}

fn time(r: &mut SliceReader<'_>) -> der::Result<u64> {
    match Tag::peek(r)? {
        Tag::UtcTime => Ok(UtcTime::decode(r)?.to_unix_duration().as_secs()),
        _ => Ok(GeneralizedTime::decode(r)?.to_unix_duration().as_secs()),
    }
}

fn basic_constraints(value: &[u8]) -> der::Result<BasicConstraints> {
    let mut r = SliceReader::new(value)?;
    let b = r.sequence(|s: &mut SliceReader<'_>| -> der::Result<BasicConstraints> {
        let ca = if !s.is_finished() && Tag::peek(s)? == Tag::Boolean { bool::decode(s)? } else { false };
        let path_len = if s.is_finished() { None } else { Some(u8::decode(s)?) };
        Ok(BasicConstraints { ca, path_len })
    })?;
    r.finish()?;
    Ok(b)
}

fn key_usage(value: &[u8]) -> der::Result<u16> {
    let mut r = SliceReader::new(value)?;
    let bits = BitStringRef::decode(&mut r)?;
    r.finish()?;
    // Sixteen bits hold the nine RFC 5280 names; more is no keyUsage.
    if bits.bit_len() > 16 {
        return Err(Tag::BitString.value_error().into());
    }
    Ok((0..16).filter(|&i| bits.get(i) == Some(true)).fold(0, |u, i| u | (0x8000 >> i)))
}

fn extensions(r: &mut SliceReader<'_>) -> der::Result<Extensions> {
    let mut out = Extensions::default();
    // [3] EXPLICIT SEQUENCE SIZE (1..MAX) OF Extension.
    let outer = AnyRef::decode(r)?;
    if outer.tag() != context(3) {
        return Err(context(3).value_error().into());
    }
    let mut seq = SliceReader::new(outer.value())?;
    seq.sequence(|list: &mut SliceReader<'_>| -> der::Result<()> {
        let mut seen_basic = false;
        let mut seen_usage = false;
        while !list.is_finished() {
            list.sequence(|e: &mut SliceReader<'_>| -> der::Result<()> {
                let oid = AnyRef::decode(e)?;
                if oid.tag() != Tag::ObjectIdentifier {
                    return Err(Tag::ObjectIdentifier.value_error().into());
                }
                let critical = if Tag::peek(e)? == Tag::Boolean { bool::decode(e)? } else { false };
                let value = AnyRef::decode(e)?;
                if value.tag() != Tag::OctetString {
                    return Err(Tag::OctetString.value_error().into());
                }
                match oid.value() {
                    BASIC_CONSTRAINTS => {
                        out.duplicate |= seen_basic;
                        seen_basic = true;
                        out.basic = Some(basic_constraints(value.value())?);
                    }
                    KEY_USAGE => {
                        out.duplicate |= seen_usage;
                        seen_usage = true;
                        out.key_usage = Some(key_usage(value.value())?);
                    }
                    _ => out.unknown_critical |= critical,
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    seq.finish()?;
    Ok(out)
}

impl<'a> Fields<'a> {
    /// Reads a certificate.
    ///
    /// # Errors
    /// A DER error if it is not a certificate of the RFC 5280 shape.
    pub fn parse(cert: &'a [u8]) -> der::Result<Fields<'a>> {
        let mut r = SliceReader::new(cert)?;
        let fields = r.sequence(|c: &mut SliceReader<'a>| -> der::Result<Fields<'a>> {
            let tbs = c.tlv_bytes()?;
            let algorithm = c.tlv_bytes()?;
            let algorithm_oid = {
                let mut a = SliceReader::new(algorithm)?;
                a.sequence(|a: &mut SliceReader<'a>| -> der::Result<&'a [u8]> {
                    let oid = AnyRef::decode(a)?;
                    if oid.tag() != Tag::ObjectIdentifier {
                        return Err(Tag::ObjectIdentifier.value_error().into());
                    }
                    // ECDSA algorithm identifiers carry no parameters; others are refused later.
                    while !a.is_finished() {
                        AnyRef::decode(a)?;
                    }
                    Ok(oid.value())
                })?
            };
            let bits = AnyRef::decode(c)?;
            if bits.tag() != Tag::BitString || bits.value().first() != Some(&0) {
                return Err(Tag::BitString.value_error().into());
            }
            let mut f = Fields::parse_tbs(tbs)?;
            f.algorithm = algorithm;
            f.algorithm_oid = algorithm_oid;
            f.signature = &bits.value()[1..];
            Ok(f)
        })?;
        r.finish()?;
        Ok(fields)
    }

    fn parse_tbs(tbs: &'a [u8]) -> der::Result<Fields<'a>> {
        let mut r = SliceReader::new(tbs)?;
        let f = r.sequence(|t: &mut SliceReader<'a>| -> der::Result<Fields<'a>> {
            let version = if Tag::peek(t)? == context(0) {
                let v = AnyRef::decode(t)?;
                u8::from_der(v.value())?
            } else {
                0
            };
            let _serial = AnyRef::decode(t)?;
            let tbs_algorithm = t.tlv_bytes()?;
            let issuer = t.tlv_bytes()?;
            let (not_before, not_after) =
                t.sequence(|v: &mut SliceReader<'a>| -> der::Result<(u64, u64)> { Ok((time(v)?, time(v)?)) })?;
            let subject = t.tlv_bytes()?;
            let spki = t.tlv_bytes()?;
            let mut extensions = None;
            while !t.is_finished() {
                // issuerUniqueID [1], subjectUniqueID [2] (skipped), extensions [3], once.
                if Tag::peek(t)? == context(3) && extensions.is_none() {
                    extensions = Some(self::extensions(t)?);
                } else if Tag::peek(t)? == context(3) {
                    return Err(context(3).value_error().into());
                } else {
                    AnyRef::decode(t)?;
                }
            }
            let extensions = extensions.unwrap_or_default();
            Ok(Fields {
                tbs,
                version,
                tbs_algorithm,
                algorithm: &[],
                algorithm_oid: &[],
                signature: &[],
                issuer,
                subject,
                not_before,
                not_after,
                spki,
                extensions,
            })
        })?;
        r.finish()?;
        Ok(f)
    }
}
