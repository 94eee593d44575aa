#!/usr/bin/env python3
"""Writes seeds/ for fuzz-kmip-ttlv with PyKMIP's own encoder (Debian's
/usr/bin/python3 with python3-pykmip): an Encrypt request and a
DiscoverVersions response as ceph-csi and rbdgw exchange them."""
import os
from kmip.core import enums, utils
from kmip.core.messages import contents, messages, payloads
from kmip.core.attributes import CryptographicParameters

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
os.makedirs(out, exist_ok=True)
v14 = contents.ProtocolVersion(1, 4)


def write(name, msg):
    s = utils.BytearrayStream()
    msg.write(s, kmip_version=enums.KMIPVersion.KMIP_1_4)
    with open(os.path.join(out, name), "wb") as f:
        f.write(s.buffer)


req = messages.RequestMessage(
    request_header=messages.RequestHeader(protocol_version=v14, batch_count=contents.BatchCount(1)),
    batch_items=[messages.RequestBatchItem(
        operation=contents.Operation(enums.Operation.ENCRYPT),
        unique_batch_item_id=contents.UniqueBatchItemID(b"0123456789abcdef"),
        request_payload=payloads.EncryptRequestPayload(
            unique_identifier="1",
            cryptographic_parameters=CryptographicParameters(
                block_cipher_mode=enums.BlockCipherMode.CBC,
                padding_method=enums.PaddingMethod.PKCS5,
                cryptographic_algorithm=enums.CryptographicAlgorithm.AES),
            data=b"a 28-byte volume passphrase.",
            iv_counter_nonce=b"\x01" * 16))])
write("encrypt-request", req)

resp = messages.ResponseMessage(
    response_header=messages.ResponseHeader(
        protocol_version=v14, time_stamp=contents.TimeStamp(1700000000),
        batch_count=contents.BatchCount(1)),
    batch_items=[messages.ResponseBatchItem(
        operation=contents.Operation(enums.Operation.DISCOVER_VERSIONS),
        unique_batch_item_id=contents.UniqueBatchItemID(b"0123456789abcdef"),
        result_status=contents.ResultStatus(enums.ResultStatus.SUCCESS),
        response_payload=payloads.DiscoverVersionsResponsePayload(protocol_versions=[v14]))])
write("discover-response", resp)

fail = messages.ResponseMessage(
    response_header=messages.ResponseHeader(
        protocol_version=v14, time_stamp=contents.TimeStamp(1700000000),
        batch_count=contents.BatchCount(1)),
    batch_items=[messages.ResponseBatchItem(
        operation=contents.Operation(enums.Operation.DECRYPT),
        result_status=contents.ResultStatus(enums.ResultStatus.OPERATION_FAILED),
        result_reason=contents.ResultReason(enums.ResultReason.ITEM_NOT_FOUND),
        result_message=contents.ResultMessage("Could not locate object: 9"))])
write("failure-response", fail)
