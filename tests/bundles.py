"""Bundles made to measure from another bundle, for the tests and the benchmarks."""
import hashlib
import json
import zipfile


def rewrite_bundle(bundle, out, edit):
    """A copy of a bundle after edit(members, manifest) changed members' bytes or the manifest;
    the sums are computed anew, so the copy verifies (tests that need another bundle)."""
    with zipfile.ZipFile(bundle) as old:
        members = dict((info.filename, old.read(info)) for info in old.infolist())
    manifest = json.loads(members.pop("manifest.json").decode())
    edit(members, manifest)
    for name in manifest["members"]:
        manifest["members"][name] = {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
        for name, data in members.items():
            new.writestr(name, data)
        new.writestr("manifest.json", json.dumps(manifest))
    return out


def spoil_deflate(data, member):
    """A zip's bytes with member's deflate stream made unreadable (its first block type set to the invalid
    one): reading it raises zlib's 'invalid block type', as a flipped bit in a real download does."""
    import io
    import struct
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size > 0
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    return data[:start] + b"\xff" + data[start + 1:]



def set_entry_flags(data, member, flags=0, method=None):
    """A zip's bytes with member's entry (its local header and its central directory record) given the
    general purpose flags flags (or-ed in) and, when given, the compression method method: what zipfile
    will not open (encrypted, patched data, a method it does not know), the rest unchanged."""
    import io
    import struct
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    end = data.rfind(b"PK\x05\x06")
    central = struct.unpack("<I", data[end + 16:end + 20])[0]
    for info in infos:  # central directory records are in infolist's order
        if info.filename == member:
            break
        central += 46 + sum(struct.unpack("<HHH", data[central + 28:central + 34]))
    out = bytearray(data)
    for at in (info.header_offset + 6, central + 8):  # flags, then method
        out[at:at + 2] = struct.pack("<H", struct.unpack("<H", data[at:at + 2])[0] | flags)
        if method is not None:
            out[at + 2:at + 4] = struct.pack("<H", method)
    return bytes(out)
