"""The GO vocabulary (which terms become the annotation vector) and optional propagation to ancestors.

As the original, the vocabulary is every term annotated on at least ``min_records`` proteins (100 by default),
counted over the whole input; it is stored in the dataset manifest, in index order (sorted by GO id).
The original did NOT propagate annotations up the ontology. pbp can (``--go-obo go-basic.obo``): each protein then
also carries every ``is_a`` / ``part_of`` ancestor of its terms, alt_ids are mapped to their primary term, and
obsolete terms are dropped (counted).
Term names (from the OBO, or a ``GO id<TAB>name`` table with ``--go-names``) are kept in the manifest beside the
vocabulary (``go_vocabulary_names``), so a pretrained model can name its annotation outputs (:func:`vocabulary_terms`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pbp.data.records import RecordError, numbered_lines, open_text
from pbp.model.vocabulary import GoTerm

PROPAGATED_RELATIONS = ("is_a", "part_of")


@dataclass
class Ontology:
    parents: dict[str, set[str]] = field(default_factory=dict)
    alt_ids: dict[str, str] = field(default_factory=dict)
    obsolete: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)
    """Term id -> name (``name:`` lines)."""
    _ancestors: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def ancestors(self, term: str) -> frozenset[str]:
        """All ancestors of ``term`` (not including itself) along is_a and part_of."""
        cached = self._ancestors.get(term)
        if cached is not None:
            return cached
        seen: set[str] = set()
        stack = list(self.parents.get(term, ()))
        while stack:
            t = stack.pop()
            if t not in seen:
                seen.add(t)
                stack.extend(self.parents.get(t, ()))
        out = frozenset(seen)
        self._ancestors[term] = out
        return out

    def propagate(self, terms: Iterable[str], stats: Counter[str] | None = None) -> tuple[str, ...]:
        out: set[str] = set()
        for t in terms:
            t = self.alt_ids.get(t, t)
            if t in self.obsolete:
                if stats is not None:
                    stats["obsolete_go_terms_dropped"] += 1
                continue
            out.add(t)
            out |= self.ancestors(t)
        return tuple(sorted(out))


def read_obo(path: str | Path) -> Ontology:
    """Parse ``go-basic.obo`` (OBO 1.2): ``[Term]`` stanzas with id, name, alt_id, is_a, relationship, is_obsolete.
    A file with no ``[Term]`` stanza (another format: the GO graph TSV, OBO-JSON) or an ``is_a`` / ``relationship``
    line without its target is a :class:`RecordError` naming the file (and line)."""
    onto = Ontology()
    term: str | None = None
    in_term = False
    stanzas = 0
    with open_text(path) as f:
        for i, line in numbered_lines(f, path):
            if line.startswith("["):
                in_term = line.strip() == "[Term]"
                stanzas += in_term
                term = None
                continue
            if not in_term or ":" not in line:
                continue
            key, _, value = line.partition(": ")
            value = value.split(" !", 1)[0].strip()
            if key == "id":
                term = value
                onto.parents.setdefault(term, set())
            elif term is None:
                continue
            elif key == "name":
                onto.names[term] = value
            elif key == "alt_id":
                onto.alt_ids[value] = term
            elif key == "is_a":
                if not value:
                    raise RecordError(str(path), i, term, "bad_obo_line", f"{line!r}: is_a without its parent term")
                onto.parents[term].add(value.split()[0])
            elif key == "relationship":
                rel, _, target = value.partition(" ")
                if not target.strip():
                    raise RecordError(str(path), i, term, "bad_obo_line", f"{line!r}: relationship without its target")
                if rel in PROPAGATED_RELATIONS:
                    onto.parents[term].add(target.split()[0])
            elif key == "is_obsolete" and value == "true":
                onto.obsolete.add(term)
    if not stanzas:
        raise RecordError(str(path), 1, None, "not_obo", "no [Term] stanza: not a GO ontology in OBO format (such as "
                          "go-basic.obo)")  # fmt: skip
    return onto


def build_vocabulary(term_counts: Counter[str], min_records: int) -> list[str]:
    """Terms annotated on at least ``min_records`` proteins, sorted by id (the annotation vector's order)."""
    return sorted(t for t, n in term_counts.items() if n >= min_records)


def read_go_names(path: str | Path) -> dict[str, str]:
    """GO id -> name from an OBO file (alt_ids get their primary term's name) or a ``GO id<TAB>name`` table."""
    name = str(path)
    if name.endswith((".obo", ".obo.gz")):
        onto = read_obo(path)
        alt = {a: onto.names[t] for a, t in onto.alt_ids.items() if t in onto.names}
        return {**alt, **onto.names}
    names: dict[str, str] = {}
    with open_text(path) as f:
        for _, line in numbered_lines(f, path):
            term, sep, text = line.partition("\t")
            if sep and term.startswith("GO:"):
                names[term.strip()] = text.strip()
    return names


def vocabulary_terms(manifest: dict) -> list[GoTerm]:
    """A dataset's GO vocabulary with names, in annotation order (what a pretrained model exports).

    Names come from the manifest's ``go_vocabulary_names``; a manifest built before those were kept falls back to
    the names in the OBO its build used (``build.go_obo``), where that file is still at its recorded path; else
    names are None.
    """
    vocab: list[str] = manifest["go_vocabulary"]
    names: list[str | None] | None = manifest.get("go_vocabulary_names")
    if names is None:
        obo = (manifest.get("build") or {}).get("go_obo")
        found = read_go_names(obo) if obo and Path(obo).is_file() else {}
        names = [found.get(t) for t in vocab]
    if len(names) != len(vocab):
        raise ValueError(f"manifest: {len(names)} go_vocabulary_names for {len(vocab)} go_vocabulary terms")
    return [GoTerm(t, n) for t, n in zip(vocab, names, strict=True)]
