"""tusd's hook.proto (pkg/hooks/grpc/proto), built at run time: no generated code.

The messages are declared here field by field, with tusd's names, numbers and types,
so a gRPC hook server written for tusd answers tusd-py unchanged (and the other way
round). Only protobuf is needed, imported when --hooks-grpc is used:

    package proto;
    service HookHandler { rpc InvokeHook (HookRequest) returns (HookResponse) {} }

tusd's later `expiresAt` fields (google.protobuf.Timestamp) are left out: tusd-py neither
sends nor honours them, and protobuf skips unknown fields on the wire.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PACKAGE = "proto"
SERVICE = f"{PACKAGE}.HookHandler"
INVOKE_HOOK = f"/{SERVICE}/InvokeHook"

# (name, number, type, label, message type): type is a FieldDescriptorProto.Type name,
# "map" is map<string, string>, "message" names the message type.
_Field = tuple[str, int, str, str]
MESSAGES: dict[str, list[_Field]] = {
    "HookRequest": [("type", 1, "string", ""), ("event", 2, "message", "Event")],
    "Event": [("upload", 1, "message", "FileInfo"),
              ("httpRequest", 2, "message", "HTTPRequest")],
    "FileInfo": [("id", 1, "string", ""), ("size", 2, "int64", ""),
                 ("sizeIsDeferred", 3, "bool", ""), ("offset", 4, "int64", ""),
                 ("metaData", 5, "map", ""), ("isPartial", 6, "bool", ""),
                 ("isFinal", 7, "bool", ""), ("partialUploads", 8, "repeated string", ""),
                 ("storage", 9, "map", "")],
    "FileInfoChanges": [("id", 1, "string", ""), ("metaData", 2, "map", ""),
                        ("storage", 3, "map", "")],
    "HTTPRequest": [("method", 1, "string", ""), ("uri", 2, "string", ""),
                    ("remoteAddr", 3, "string", ""), ("header", 4, "map", "")],
    "HookResponse": [("httpResponse", 1, "message", "HTTPResponse"),
                     ("rejectUpload", 2, "bool", ""), ("stopUpload", 3, "bool", ""),
                     ("changeFileInfo", 4, "message", "FileInfoChanges")],
    "HTTPResponse": [("statusCode", 1, "int64", ""), ("header", 2, "map", ""),
                     ("body", 3, "string", "")],
}


@dataclass(frozen=True)
class Messages:
    """The message classes (protobuf's, made from the descriptors above)."""

    HookRequest: Any
    HookResponse: Any
    HTTPResponse: Any
    FileInfoChanges: Any


def _file_descriptor(descriptor_pb2: Any) -> Any:
    field_type = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field_type.LABEL_OPTIONAL, field_type.LABEL_REPEATED
    scalar = {"string": field_type.TYPE_STRING, "int64": field_type.TYPE_INT64,
              "bool": field_type.TYPE_BOOL}
    file = descriptor_pb2.FileDescriptorProto(name="tusd_py/hooks/hook.proto",
                                              package=PACKAGE, syntax="proto3")
    for message_name, fields in MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for name, number, kind, type_name in fields:
            field = message.field.add(name=name, number=number, json_name=name)
            if kind == "map":
                # protoc's form of map<string, string>: a nested <Name>Entry message.
                entry_name = name[0].upper() + name[1:] + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, json_name="key",
                                type=field_type.TYPE_STRING, label=optional)
                entry.field.add(name="value", number=2, json_name="value",
                                type=field_type.TYPE_STRING, label=optional)
                field.type, field.label = field_type.TYPE_MESSAGE, repeated
                field.type_name = f".{PACKAGE}.{message_name}.{entry_name}"
            elif kind == "message":
                field.type, field.label = field_type.TYPE_MESSAGE, optional
                field.type_name = f".{PACKAGE}.{type_name}"
            elif kind.startswith("repeated "):
                field.type, field.label = scalar[kind.split()[1]], repeated
            else:
                field.type, field.label = scalar[kind], optional
    service = file.service.add(name="HookHandler")
    service.method.add(name="InvokeHook", input_type=f".{PACKAGE}.HookRequest",
                       output_type=f".{PACKAGE}.HookResponse")
    return file


@functools.cache
def messages() -> Messages:
    """The message classes, built once per process (in a pool of their own)."""
    descriptor_pb2 = importlib.import_module("google.protobuf.descriptor_pb2")
    descriptor_pool = importlib.import_module("google.protobuf.descriptor_pool")
    message_factory = importlib.import_module("google.protobuf.message_factory")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor(descriptor_pb2))

    def cls(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))

    return Messages(cls("HookRequest"), cls("HookResponse"), cls("HTTPResponse"),
                    cls("FileInfoChanges"))


def request_message(body: Mapping[str, Any]) -> Any:
    """tusd's hook JSON -> HookRequest, as tusd's grpc.marshal fills it (a header's first
    value only: the proto's header is map<string, string>)."""
    event, upload = body["Event"], body["Event"]["Upload"]
    http = event["HTTPRequest"]
    request = messages().HookRequest(type=body["Type"])
    info = request.event.upload
    info.id = upload["ID"] or ""
    info.size = upload["Size"] or 0
    info.sizeIsDeferred = bool(upload["SizeIsDeferred"])
    info.offset = upload["Offset"] or 0
    info.metaData.update(upload["MetaData"] or {})
    info.isPartial = bool(upload["IsPartial"])
    info.isFinal = bool(upload["IsFinal"])
    info.partialUploads.extend(upload["PartialUploads"] or ())
    info.storage.update(upload["Storage"] or {})
    req = request.event.httpRequest
    req.method, req.uri, req.remoteAddr = http["Method"], http["URI"], http["RemoteAddr"]
    req.header.update({k: v[0] for k, v in (http["Header"] or {}).items() if k and v})
    return request


def response_document(response: Any) -> dict[str, Any]:
    """HookResponse -> tusd's hook response JSON (as tusd's grpc.unmarshal reads it: an
    empty metadata map is no change)."""
    doc: dict[str, Any] = {"RejectUpload": response.rejectUpload,
                           "StopUpload": response.stopUpload}
    if response.HasField("httpResponse"):
        http = response.httpResponse
        doc["HTTPResponse"] = {"StatusCode": http.statusCode, "Body": http.body,
                               "Header": dict(http.header)}
    if response.HasField("changeFileInfo"):
        changes = response.changeFileInfo
        doc["ChangeFileInfo"] = {"ID": changes.id,
                                 "MetaData": dict(changes.metaData) or None}
    return doc


def event_document(request: Any) -> dict[str, Any]:
    """HookRequest -> the JSON shape (for Python gRPC hook servers, e.g. in tests)."""
    info, http = request.event.upload, request.event.httpRequest
    return {"Type": request.type, "Event": {
        "Upload": {"ID": info.id, "Size": info.size, "SizeIsDeferred": info.sizeIsDeferred,
                   "Offset": info.offset, "MetaData": dict(info.metaData),
                   "IsPartial": info.isPartial, "IsFinal": info.isFinal,
                   "PartialUploads": list(info.partialUploads), "Storage": dict(info.storage)},
        "HTTPRequest": {"Method": http.method, "URI": http.uri, "RemoteAddr": http.remoteAddr,
                        "Header": dict(http.header)}}}


def response_message(doc: Mapping[str, Any]) -> Any:
    """tusd's hook response JSON -> HookResponse (for Python gRPC hook servers)."""
    response = messages().HookResponse(rejectUpload=bool(doc.get("RejectUpload")),
                                       stopUpload=bool(doc.get("StopUpload")))
    if doc.get("HTTPResponse"):
        http = doc["HTTPResponse"]
        response.httpResponse.statusCode = int(http.get("StatusCode") or 0)
        response.httpResponse.body = str(http.get("Body") or "")
        response.httpResponse.header.update(http.get("Header") or {})
    if doc.get("ChangeFileInfo"):
        changes = doc["ChangeFileInfo"]
        response.changeFileInfo.id = str(changes.get("ID") or "")
        response.changeFileInfo.metaData.update(changes.get("MetaData") or {})
    return response
