//! [`Codec`]: prost's encoding, and a decoding that reads each message from one
//! [`Bytes`] instead of tonic's receive buffer.
//!
//! tonic hands a decoder the message inside its `BytesMut` receive buffer; prost then
//! takes every `bytes` field out of it with `BytesMut::split_to` and `freeze`, which
//! costs several times a `Bytes` slice (the buffer's kind checks, its shared count
//! and the cursor moved twice). A publish of 1,000 messages has 1,000 values and, with
//! message ids, 1,000 ids: this decoder takes the whole message out once and prost
//! slices the fields from that `Bytes` (a reference count each, no copy). The fields
//! point into the same memory either way.

use std::marker::PhantomData;

use bytes::Buf;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The codec of every tidelog service (set with `codec_path` in `build.rs`).
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BytesDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder::new()
    }
}

/// Decodes a `U` from the message taken out whole as one [`bytes::Bytes`].
#[derive(Debug, Clone)]
pub struct BytesDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U> BytesDecoder<U> {
    /// A decoder of `U` (for a service that decodes a request outside tonic's server).
    pub fn new() -> Self {
        BytesDecoder { _pd: PhantomData }
    }
}

impl<U> Default for BytesDecoder<U> {
    fn default() -> Self {
        Self::new()
    }
}

impl<U: prost::Message + Default> Decoder for BytesDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message = buf.copy_to_bytes(buf.remaining());
        // INTERNAL for a message that does not parse, as tonic's own prost codec and
        // gRPC's status code guide have it.
        U::decode(message)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message as _;

    use crate::v1::{Message, PublishRequest};

    #[test]
    fn fields_decoded_from_bytes_are_slices_of_the_message() {
        let request = PublishRequest {
            topic: "t".into(),
            messages: (0..3)
                .map(|i| Message {
                    value: Bytes::from(vec![i as u8; 100]),
                    id: Bytes::from(vec![7; 16]),
                    ..Message::default()
                })
                .collect(),
            ..PublishRequest::default()
        };
        let encoded = Bytes::from(request.encode_to_vec());
        let decoded = PublishRequest::decode(encoded.clone()).expect("decodes");
        assert_eq!(decoded, request);
        let range = encoded.as_ptr_range();
        for message in &decoded.messages {
            assert!(
                range.contains(&message.value.as_ptr()),
                "value is not copied"
            );
            assert!(range.contains(&message.id.as_ptr()), "id is not copied");
        }
    }
}
