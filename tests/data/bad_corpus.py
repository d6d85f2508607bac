"""The bad-input corpus: every kind of dirt a web corpus has, each with the place it must end up.

`build_bad_corpus(out_dir, server)` writes a Wukong CSV, a Zero JSON array, a WuDaoMM JSON array
and a Chinese-CLIP split, registers the matching routes on a local `ImageServer` (404s, slow
answers, redirect loops, wrong content types, flaky 503s, oversized bodies...), and returns the
list of `Case`s: (input file, line) -> expected place (ingest / validate / image quarantine,
ledger, or snapshot) and rule or error kind. Run as a script to write one into a folder:
`python tests/data/bad_corpus.py OUT` (serving is then up to you).
"""

from __future__ import annotations

import base64
import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

try:
    from .http_server import ImageServer, Route, closed_port
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from http_server import ImageServer, Route, closed_port  # type: ignore[no-redef]

GOOD = ["红色的圆形在左上角", "蓝色的方块在中间", "绿色三角形在右下角", "黄色的星星在上方", "紫色圆环在左边", "白色背景上的黑点"]

# Settings under which every case below lands where it says (tests use them).
TEST_LIMITS = {
    "download": {"connect_timeout": 1.0, "read_timeout": 1.0, "total_timeout": 5.0, "retries": 1, "backoff": 0.05,
                 "max_bytes": 64 * 1024, "concurrency": 8},
    "images": {"min_side": 16, "max_pixels": 2_000_000, "max_rejected_share": 1.0},
}


@dataclass
class Case:
    kind: str  # what is wrong (or "good")
    source: str  # corpus format of the file
    file: str
    line: int
    place: str  # ingest | validate | image | ledger | snapshot
    rule: str  # quarantine rule, ledger error kind, or "ok" / "dedup" for the snapshot


@dataclass
class BadCorpus:
    root: Path
    inputs: dict[str, list[Path]] = field(default_factory=dict)
    cases: list[Case] = field(default_factory=list)
    ingested_rows: dict[str, int] = field(default_factory=dict)  # rows + ingest rejects expected per source

    @property
    def kinds(self) -> set[str]:
        return {c.kind for c in self.cases if not c.kind.startswith("good")}


def png(w: int, h: int, color: tuple[int, int, int] = (200, 30, 30), noise: bool = False, mode: str = "RGB") -> bytes:
    if noise:
        rnd = random.Random(w * 7919 + h)
        img = Image.frombytes("RGB", (w, h), bytes(rnd.getrandbits(8) for _ in range(w * h * 3)))
    else:
        img = Image.new(mode, (w, h), color if mode == "RGB" else 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wukong(root: Path, srv: ImageServer, bc: BadCorpus) -> None:
    f = root / "wukong" / "wukong_100m_0.csv"
    lines: list[bytes] = [b"url,caption"]

    def add(kind: str, url: str, caption: str | bytes, place: str, rule: str, raw: bytes | None = None) -> None:
        cap = caption if isinstance(caption, bytes) else caption.encode("utf-8")
        lines.append(raw if raw is not None else url.encode() + b"," + cap)
        bc.cases.append(Case(kind, "wukong", str(f), len(lines), place, rule))

    def img(path: str, body: bytes, **kw: object) -> str:
        srv.routes[path] = Route(body=body, **kw)  # type: ignore[arg-type]
        return srv.url(path)

    colours = [(200, 30, 30), (30, 30, 200), (30, 160, 30), (220, 200, 20), (140, 40, 160), (10, 10, 10)]
    for i, (cap, col) in enumerate(zip(GOOD, colours, strict=True)):
        add("good", img(f"/img/good{i}.png", png(32, 32, col)), cap, "snapshot", "ok")
    add("duplicate_id", srv.url("/img/good0.png"), GOOD[0], "validate", "unique_sample_id")
    dup = png(32, 32, (90, 200, 200))
    add("duplicate_image", img("/img/dup_a.png", dup), "青色的圆形在中间", "snapshot", "dedup")
    add("duplicate_image", img("/img/dup_b.png", dup), "青色圆形位于中央", "snapshot", "dedup")
    add("corrupt_image", img("/img/corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "损坏的图片文件内容", "image", "decodable")
    good_noise = png(40, 40, noise=True)
    add("truncated_image", img("/img/trunc.png", good_noise[: len(good_noise) // 2]), "被截断的图片文件", "image", "decodable")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "zero.png").write_bytes(b"")
    add("zero_byte_image", "../images/zero.png", "零字节的图片文件", "image", "decodable")
    add("non_image_file", img("/img/notes.png", "这不是图片而是文本".encode()), "伪装成图片的文本文件", "image", "decodable")
    add("oversized_bytes", img("/img/huge.png", png(200, 200, noise=True)), "体积过大的图片文件", "ledger", "too_large")
    add("decompression_bomb", img("/img/bomb.png", png(4000, 4000, mode="L")), "像素数量极多的图片", "image", "max_pixels")
    add("tiny_image", img("/img/tiny.png", png(8, 8)), "尺寸很小的图片文件", "image", "min_side")
    add("extreme_aspect", img("/img/wide.png", png(200, 20)), "宽高比极端的图片", "image", "aspect_ratio")
    add("empty_text", srv.url("/img/good1.png"), "", "validate", "text_not_empty")
    add("whitespace_text", srv.url("/img/good1.png"), "   \t ", "validate", "text_not_empty")
    add("non_chinese_text", srv.url("/img/good2.png"), "a red circle at the top left", "validate", "chinese_ratio")
    add("overlong_text", srv.url("/img/good2.png"), "很长的描述" * 130, "validate", "text_length")
    add("boilerplate_text", srv.url("/img/good3.png"), "点击查看大图", "validate", "boilerplate")
    add("bad_url_scheme", "ftp://example.invalid/a.png", "文件传输协议的链接", "validate", "url_scheme")
    add("malformed_csv", "", "", "ingest", "malformed_csv", raw=srv.url("/img/good4.png").encode() + ",多余,字段".encode())
    add("wrong_encoding", srv.url("/img/good4.png"), "错误编码的标题".encode("gb18030"), "ingest", "encoding")
    add("missing_field", "", "没有链接的标题", "ingest", "missing_field")
    add("unreachable_url", f"http://127.0.0.1:{closed_port()}/a.png", "无法连接的服务器", "ledger", "connection")
    add("http_404", srv.url("/img/gone.png"), "已经删除的图片", "ledger", "http_status")
    add("http_500", img("/img/err500.png", b"", status=500), "服务器内部错误", "ledger", "http_status")
    add("slow_response", img("/img/slow.png", png(32, 32), delay=3.0), "响应很慢的服务器", "ledger", "timeout")
    srv.routes["/loop"] = Route(status=302, location="/loop", content_type="text/html")
    add("redirect_loop", srv.url("/loop"), "无限重定向的链接", "ledger", "too_many_redirects")
    srv.routes["/r1"] = Route(status=302, location="/r2", content_type="text/html")
    srv.routes["/r2"] = Route(status=301, location="/img/redirected.png", content_type="text/html")
    add("good_redirected", img("/img/redirected.png", png(32, 32, (250, 120, 0))), "两次重定向后的橙色图片", "snapshot", "ok")
    add("wrong_content_type", img("/img/page.png", b"<html>not found</html>", content_type="text/html"), "返回网页的链接", "ledger", "content_type")
    add("good_after_503", img("/img/flaky.png", png(32, 32, (0, 90, 90)), fail_first=1), "第一次失败的服务器", "snapshot", "ok")
    add("missing_local_file", "../images/missing.png", "本地不存在的图片", "ledger", "missing_file")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"\n".join(lines) + b"\n")
    bc.inputs["wukong"] = [f]
    bc.ingested_rows["wukong"] = len(lines) - 1


def _zero(root: Path, srv: ImageServer, bc: BadCorpus) -> None:
    f = root / "zero" / "zero_bad.json"
    srv.routes["/img/zero_good.png"] = Route(body=png(32, 32, (60, 60, 220)))
    srv.routes["/img/zero_other.png"] = Route(body=png(32, 32, (60, 220, 60)))

    def rec(key: str, url: str | None, title: str = "蓝色的方块在右边") -> bytes:
        r = {"Url": "https://page.invalid/1", "Title": title, "Content": "页面内容描述蓝色方块", "Keywords": "蓝色,方块,右边",
             "ImageKey": key, "ImageQuery": "蓝色方块"}
        if url is not None:
            r["ImageUrl"] = url
        return json.dumps(r, ensure_ascii=False).encode()

    body = [
        ("good", rec("z1", srv.url("/img/zero_good.png")), "snapshot", "ok", 4),
        ("malformed_json", b'{"Url": "u", "Title": "\xe5\x9d\x8f, "ImageKey": "z2", "ImageUrl": "x"}', "ingest", "malformed_json", 1),
        ("wrong_encoding", rec("z3", srv.url("/img/zero_good.png"), "GBKTITLE").replace(b"GBKTITLE", "错误编码".encode("gb18030")),
         "ingest", "encoding", 1),
        ("missing_field", rec("z4", None), "ingest", "missing_field", 1),
        ("malformed_json", b'{"Url": "u", "Title": "t", "ImageKey": "z5", "ImageUrl": tru}', "ingest", "malformed_json", 1),
        ("duplicate_id", rec("z1", srv.url("/img/zero_other.png")), "validate", "unique_sample_id", 4),
    ]
    lines = [b"["]
    for kind, raw, place, rule, _ in body:
        lines.append(b" " + raw + b",")
        bc.cases.append(Case(kind, "zero", str(f), len(lines), place, rule))
    lines.append(b' {"Url": "u", "Title": "\xe6\x88\xaa\xe6\x96\xad", "ImageKey": "z7", "ImageUrl": "http://x/')
    bc.cases.append(Case("truncated_json", "zero", str(f), len(lines), "ingest", "truncated"))
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"\n".join(lines))
    bc.inputs["zero"] = [f]
    bc.ingested_rows["zero"] = sum(n for *_, n in body) + 1


def _wudaomm(root: Path, srv: ImageServer, bc: BadCorpus) -> None:
    f = root / "wudaomm" / "animals.json"
    srv.routes["/img/wudao.png"] = Route(body=png(32, 32, (120, 80, 40)))
    (root / "wudaomm" / "local_cat.png").parent.mkdir(parents=True, exist_ok=True)
    (root / "wudaomm" / "local_cat.png").write_bytes(png(32, 32, (240, 240, 240)))
    recs = [
        ("good", {"name": "a.jpg", "tag": "动物", "url": srv.url("/img/wudao.png"), "captions": "棕色的小狗在草地上奔跑"}, "snapshot", "ok"),
        ("missing_url", {"name": "gone.jpg", "tag": "动物", "captions": "没有链接的记录"}, "ingest", "missing_url"),
        ("good_local_name", {"name": "local_cat.png", "tag": "动物", "captions": "白色的猫咪在睡觉"}, "snapshot", "ok"),
    ]
    lines = [b"["]
    for i, (kind, r, place, rule) in enumerate(recs):
        lines.append(json.dumps(r, ensure_ascii=False).encode() + (b"," if i < len(recs) - 1 else b""))
        bc.cases.append(Case(kind, "wudaomm", str(f), len(lines), place, rule))
    lines.append(b"]")
    f.write_bytes(b"\n".join(lines) + b"\n")
    bc.inputs["wudaomm"] = [f]
    bc.ingested_rows["wudaomm"] = len(recs)


def _cnclip(root: Path, bc: BadCorpus) -> None:
    d = root / "cnclip"
    d.mkdir(parents=True, exist_ok=True)
    tsv, texts = d / "train_imgs.tsv", d / "train_texts.jsonl"
    good = base64.urlsafe_b64encode(png(32, 32, (10, 200, 120))).decode()
    tsv.write_text(f"1\t{good}\n2\t!!!not*base64!!!\n", encoding="ascii")
    rows = [
        ("good", json.dumps({"text_id": 1, "text": "绿色的圆形在下方", "image_ids": [1]}, ensure_ascii=False), "snapshot", "ok"),
        ("inline_missing_image", json.dumps({"text_id": 2, "text": "找不到的图片编号", "image_ids": [99]}, ensure_ascii=False), "ledger", "inline_missing"),
        ("inline_bad_base64", json.dumps({"text_id": 3, "text": "损坏的编码数据", "image_ids": [2]}, ensure_ascii=False), "ledger", "inline_base64"),
        ("malformed_json_line", '{"text_id": 4, "text": "坏行", "image_ids": [1', "ingest", "malformed_json"),
    ]
    texts.write_text("\n".join(r for _, r, _, _ in rows) + "\n", encoding="utf-8")
    bc.cases += [Case(k, "cnclip", str(texts), i + 1, p, r) for i, (k, _, p, r) in enumerate(rows)]
    bc.inputs["cnclip"] = [texts]
    bc.ingested_rows["cnclip"] = len(rows)


def build_bad_corpus(out_dir: str | Path, server: ImageServer) -> BadCorpus:
    root = Path(out_dir)
    bc = BadCorpus(root)
    _wukong(root, server, bc)
    _zero(root, server, bc)
    _wudaomm(root, server, bc)
    _cnclip(root, bc)
    return bc


if __name__ == "__main__":
    with ImageServer() as srv:
        corpus = build_bad_corpus(sys.argv[1] if len(sys.argv) > 1 else "bad_corpus", srv)
    print(f"wrote {len(corpus.cases)} cases ({len(corpus.kinds)} kinds of bad input) under {corpus.root}")
