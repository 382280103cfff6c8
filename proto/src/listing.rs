//! `ListInstancesReply`, written by hand instead of generated, so that a
//! registry can send instances it encoded once: a listing of 1,000
//! instances at the registry's size limits is 3.5 MB, and cloning and
//! encoding it afresh for every read was most of what a `ListInstances`
//! cost. The wire format is the proto's (`repeated Instance instances = 1;
//! uint64 revision = 2;`), so every other client reads it as generated.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use crate::v1::Instance;

/// The reply of `Registry/ListInstances`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListInstancesReply {
    /// The instances (what a client decodes into; a server may also fill it).
    pub instances: Vec<Instance>,
    /// The registry's revision when it listed them.
    pub revision: u64,
    /// More instances, already encoded as this message's field 1 (each a
    /// key, a length and an `Instance`): sent after [`Self::instances`], as
    /// they are. A decoded reply leaves it empty.
    pub encoded: Bytes,
}

/// The key of field 1 (`instances`), length-delimited.
pub const INSTANCES_KEY: u8 = (1 << 3) | 2;

impl prost::Message for ListInstancesReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for instance in &self.instances {
            encoding::message::encode(1, instance, buf);
        }
        buf.put_slice(&self.encoded);
        if self.revision != 0 {
            encoding::uint64::encode(2, &self.revision, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.instances, buf, ctx),
            2 => encoding::uint64::merge(wire_type, &mut self.revision, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(1, &self.instances)
            + self.encoded.len()
            + if self.revision == 0 {
                0
            } else {
                encoding::uint64::encoded_len(2, &self.revision)
            }
    }

    fn clear(&mut self) {
        self.instances.clear();
        self.revision = 0;
        self.encoded = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: "college".into(),
            address: "https://10.0.0.1:7200".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn pre_encoded_instances_read_back_as_ordinary_ones_after_those_in_the_list() {
        let mut encoded = Vec::new();
        let later = instance("c2");
        encoding::message::encode(1, &later, &mut encoded);
        let reply = ListInstancesReply {
            instances: vec![instance("c1")],
            revision: 42,
            encoded: encoded.into(),
        };
        let bytes = reply.encode_to_vec();
        assert_eq!(bytes.len(), reply.encoded_len());
        let read = ListInstancesReply::decode(bytes.as_slice()).unwrap();
        assert_eq!(read.instances, vec![instance("c1"), later]);
        assert_eq!(read.revision, 42);
        assert!(read.encoded.is_empty());
    }
}
