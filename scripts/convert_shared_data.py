#!/usr/bin/env python3
"""Convert the shared public preference data into the bundled canonical raw-annotation files.

Reads the read-only source snapshot (see SOURCES.md there) and writes, under --out (default: the
package's ``rm_pipeline/data/``):

* ``annotations/pandalm_testset_v1.jsonl``   PandaLM test set, one row per human vote (3 per item)
* ``annotations/tulu1_human_eval.jsonl``     Tulu-1 human eval, one row per vote
* ``annotations/hh_rlhf_harmless_test.jsonl`` Anthropic HH-RLHF harmless-base test, one row per pair
* ``licenses/``                              upstream license files and attribution notes

Output is deterministic: rows keep the source order and are written as ``json.dumps(row,
ensure_ascii=False)`` + "\\n" in UTF-8. Regenerate with ``python scripts/convert_shared_data.py``.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "rm_pipeline" / "data"

PANDALM_VOTES = {"1": "a", "2": "b", "0": "tie"}
TULU_PREFERENCES = {
    "a-is-better": ("a", 2),
    "a-is-slightly-better": ("a", 1),
    "tie": ("tie", None),
    "b-is-slightly-better": ("b", 1),
    "b-is-better": ("b", 2),
}
HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}

TULU_LICENSE_NOTE = """\
Tulu-1 human evaluation annotations
===================================

Files: data/annotations/tulu1_human_eval.jsonl (converted from
human_eval/data/eval_annotations_tulu_1.jsonl)

Origin: allenai/open-instruct @ e6c3044, folder human_eval/data/ (the instance ids
"user_oriented_task_N" refer to yizhongw/self-instruct @ 0b26cca, user-oriented instructions).

License: Apache License 2.0, the license of the allenai/open-instruct repository (the data is
redistributed under it; full text: https://www.apache.org/licenses/LICENSE-2.0). The upstream
README of the human-eval annotation interface is copied beside this note as
tulu1-README.upstream.md.

Attribution: Wang, Ivison, Dasigi, Hessel, Khot, Chandu, Wadden, MacMillan, Smith, Beltagy,
Hajishirzi. "How Far Can Camels Go? Exploring the State of Instruction Tuning on Open Resources",
2023, arXiv:2306.04751.

Changes: re-encoded into this project's canonical raw-annotation rows (one row per vote; the
per-vote A/B order is kept as shown to each evaluator); preference scale mapped to vote + strength.
"""


def _row(
    item_id,
    prompt_id,
    prompt,
    response_a,
    response_b,
    annotator_id,
    vote,
    strength,
    domain,
    source,
    batch,
    context_a=None,
    context_b=None,
) -> dict:
    """One canonical row, keys in the documented order."""
    return {
        "item_id": item_id,
        "prompt_id": prompt_id,
        "prompt": prompt,
        "response_a": response_a,
        "response_b": response_b,
        "context_a": context_a,
        "context_b": context_b,
        "annotator_id": annotator_id,
        "vote": vote,
        "strength": strength,
        "domain": domain,
        "source": source,
        "batch": batch,
    }


def _sha12(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def convert_pandalm(shared: Path, batch: str) -> list[dict]:
    items = json.loads((shared / "pandalm" / "testset-v1.json").read_text(encoding="utf-8"))
    rows = []
    for item in items:
        idx = item["idx"]
        prompt = item["instruction"] + ("\n\n" + item["input"] if item["input"] else "")
        for k in (1, 2, 3):
            value = str(item[f"annotator{k}"])
            if value not in PANDALM_VOTES:
                raise ValueError(f"pandalm idx {idx}: annotator{k} has unknown value {value!r}")
            rows.append(
                _row(
                    item_id=f"pandalm:{idx}",
                    prompt_id=f"pandalm:{_sha12(prompt)}",
                    prompt=prompt,
                    response_a=item["response1"],
                    response_b=item["response2"],
                    annotator_id=f"pandalm:annotator{k}",
                    vote=PANDALM_VOTES[value],
                    strength=None,
                    domain=item["motivation_app"],
                    source="pandalm",
                    batch=batch,
                )
            )
    return rows


def convert_tulu1(shared: Path, batch: str) -> list[dict]:
    path = shared / "tulu1-human-eval" / "eval_annotations_tulu_1.jsonl"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["preference"] not in TULU_PREFERENCES:
            raise ValueError(f"tulu1 line {n}: unknown preference {rec['preference']!r}")
        vote, strength = TULU_PREFERENCES[rec["preference"]]
        pair = "|".join(sorted([rec["model_a"], rec["model_b"]]))
        rows.append(
            _row(
                item_id=f"tulu1:{rec['instance_id']}:{pair}",
                prompt_id=f"tulu1:{rec['instance_id']}",
                prompt=rec["prompt"],
                response_a=rec["completion_a"],
                response_b=rec["completion_b"],
                annotator_id=f"tulu1:{rec['evaluator']}",
                vote=vote,
                strength=strength,
                domain=rec.get("motivation_app") or rec.get("vicuna_category") or None,
                source="tulu1-human-eval",
                batch=batch,
            )
        )
    return rows


def tulu1_checks(rows: list[dict]) -> tuple[int, int]:
    """(items whose votes show different completion sets, items seen in both A/B orders)."""
    shown: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        shown.setdefault(r["item_id"], set()).add((r["response_a"], r["response_b"]))
    mismatched = sum(1 for pairs in shown.values() if len({frozenset(p) for p in pairs}) > 1)
    swapped = sum(1 for pairs in shown.values() if any((b, a) in pairs for a, b in pairs if a != b))
    return mismatched, swapped


def _hh_split(transcript: str) -> tuple[list[dict], str]:
    """Split an HH transcript at its last Assistant turn into (context messages, response)."""
    cut = transcript.rindex("\n\nAssistant:")
    context, response = transcript[:cut], transcript[cut + len("\n\nAssistant:") :]
    parts = HH_MARKER.split(context)  # [preamble, role, text, role, text, ...]
    messages = [{"role": HH_ROLES[role], "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2])]
    if parts[0].strip():  # text before the first marker: keep it rather than drop it
        messages.insert(0, {"role": "user", "content": parts[0].strip()})
    return messages, response.strip()


def convert_hh_harmless(shared: Path, batch: str) -> list[dict]:
    path = shared / "hh-rlhf" / "harmless-base_test.jsonl"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        context_a, response_a = _hh_split(rec["chosen"])
        context_b, response_b = _hh_split(rec["rejected"])
        canonical = json.dumps(context_a, sort_keys=True, ensure_ascii=False)
        rows.append(
            _row(
                item_id=f"hh-harmless:{n}",
                prompt_id=f"hh-harmless:{_sha12(canonical)}",
                prompt=context_a,
                response_a=response_a,
                response_b=response_b,
                context_a=context_a,
                context_b=context_b,
                annotator_id="hh-rlhf:crowd",
                vote="a",
                strength=None,
                domain="harmless",
                source="hh-rlhf",
                batch=batch,
            )
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def copy_licenses(shared: Path, out: Path) -> None:
    lic = out / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "pandalm" / "LICENSE", lic / "pandalm-LICENSE")
    shutil.copyfile(shared / "hh-rlhf" / "LICENSE", lic / "hh-rlhf-LICENSE")
    shutil.copyfile(shared / "tulu1-human-eval" / "README.upstream.md", lic / "tulu1-README.upstream.md")
    (lic / "tulu1-NOTICE.txt").write_text(TULU_LICENSE_NOTE, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=DEFAULT_SHARED, help=f"source data folder (default: {DEFAULT_SHARED})"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    outputs = {
        "pandalm_testset_v1": convert_pandalm,
        "tulu1_human_eval": convert_tulu1,
        "hh_rlhf_harmless_test": convert_hh_harmless,
    }
    for batch, convert in outputs.items():
        rows = convert(args.shared, batch)
        path = args.out / "annotations" / f"{batch}.jsonl"
        write_jsonl(path, rows)
        items = len({r["item_id"] for r in rows})
        prompts = len({r["prompt_id"] for r in rows})
        print(f"{path}: {len(rows)} rows, {items} items, {prompts} prompt_ids")
        if batch == "tulu1_human_eval":
            mismatched, swapped = tulu1_checks(rows)
            print(f"  tulu1: {swapped} items shown in both A/B orders (left as is; ingestion normalises)")
            if mismatched:
                print(f"  WARNING tulu1: {mismatched} items whose votes show different completion pairs")
        if batch == "hh_rlhf_harmless_test":
            ctx = sum(1 for r in rows if r["context_a"] != r["context_b"])
            same = sum(1 for r in rows if r["response_a"] == r["response_b"])
            empty = sum(1 for r in rows if not r["response_a"] or not r["response_b"])
            print(
                f"  hh: {ctx} rows with mismatched contexts, {same} with identical responses, "
                f"{empty} with an empty response (all kept)"
            )
    copy_licenses(args.shared, args.out)
    print(f"{args.out / 'licenses'}: upstream licenses and attribution notes")


if __name__ == "__main__":
    main()
