"""``/datasets/{id}/files/{doc_id}/tags`` and ``/datasets/{id}/tags``: add and remove user tags,
on one document or on a selection. AI tags are never changed; user tags survive re-indexing."""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException

from imageindex_airflow.auth import DOC_ID, DocId, EditableDataset
from imageindex_airflow.inputs import clean_tags
from imageindex_airflow.library import store_of
from imageindex_airflow.schemas import (
    ERRORS,
    MAX_IDS_PER_REQUEST,
    MAX_TAGS_PER_REQUEST,
    BulkTagsBody,
    TagsBody,
    TagsOut,
)

router = APIRouter()


def _change_tags(ds, ids: list[str], tags: list[str], add: bool) -> dict:
    tags = clean_tags(tags, "tags")
    if not tags or len(tags) > MAX_TAGS_PER_REQUEST:
        raise HTTPException(400, f"give 1-{MAX_TAGS_PER_REQUEST} non-empty tags")
    ids = list(dict.fromkeys(ids))
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        raise HTTPException(400, f"give 1-{MAX_IDS_PER_REQUEST} document ids")
    if any(not re.fullmatch(DOC_ID, i) for i in ids):
        raise HTTPException(400, "document ids are 32 lowercase hex characters")
    store = store_of(ds)
    found = {d["id"] for d in store.get(ds.id, ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(404, f"dataset '{ds.id}' has no document {missing[0]}")
    change = store.add_user_tags if add else store.remove_user_tags
    changed = change(ds.id, ids, tags)
    docs = store.get(ds.id, ids)
    return {
        "changed": changed,
        "documents": [
            {
                "id": d["id"],
                "tags": {"ai": d.get("tags_ai") or [], "user": d.get("tags_user") or []},
            }
            for d in docs
        ],
    }


@router.post("/datasets/{dataset_id}/files/{doc_id}/tags", response_model=TagsOut, responses=ERRORS)
def add_tags(ds: EditableDataset, doc_id: DocId, body: TagsBody) -> dict:
    """Add user tags to one document (ai tags are never changed; user tags survive re-indexing)."""
    return _change_tags(ds, [doc_id], body.tags, add=True)


@router.delete(
    "/datasets/{dataset_id}/files/{doc_id}/tags", response_model=TagsOut, responses=ERRORS
)
def remove_tags(ds: EditableDataset, doc_id: DocId, body: TagsBody) -> dict:
    """Remove user tags from one document."""
    return _change_tags(ds, [doc_id], body.tags, add=False)


@router.post("/datasets/{dataset_id}/tags", response_model=TagsOut, responses=ERRORS)
def add_tags_bulk(ds: EditableDataset, body: BulkTagsBody) -> dict:
    """Add user tags to several documents (a selection in the gallery)."""
    return _change_tags(ds, body.ids, body.tags, add=True)


@router.delete("/datasets/{dataset_id}/tags", response_model=TagsOut, responses=ERRORS)
def remove_tags_bulk(ds: EditableDataset, body: BulkTagsBody) -> dict:
    """Remove user tags from several documents."""
    return _change_tags(ds, body.ids, body.tags, add=False)
