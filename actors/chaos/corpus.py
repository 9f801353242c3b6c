"""The chaos runner's knowledge base: two short contracts its workflow runs compare (hash embedder)."""

from __future__ import annotations

from pathlib import Path

from index.types import Access

TENANT = "chaos"
CONTRACTS = {
    "contract/alpha": (
        "Alpha Supply Contract",
        "# Alpha Supply Contract\n\nThe price is 12 euros per unit, invoiced monthly.\n\n"
        "The term is two years from the effective date and renews for one year unless cancelled.\n",
    ),
    "contract/beta": (
        "Beta Supply Contract",
        "# Beta Supply Contract\n\nThe price is 9 euros per unit with a yearly fee of 500 euros.\n\n"
        "The term is one year from the effective date and does not renew.\n",
    ),
}
WORKFLOW_REQUEST = (
    "Compare the Alpha and Beta contracts on price and term in a table and email it to ops@example.com"
)


def build(data_dir: Path) -> None:
    """Ingest the contracts into an index under `data_dir`, readable by everyone in the tenant."""
    from index.embed import load_embedder
    from index.ingest import Ingestor
    from store.settings import Settings

    settings = Settings.from_env({"DOCENT_DATA_DIR": str(data_dir), "DOCENT_EMBED_MODEL": "hash"})
    embedder = load_embedder(settings, "hash", purpose="offline")
    with Ingestor(settings, embedder) as ingestor:
        for doc_id, (title, text) in CONTRACTS.items():
            access = Access(tenant=TENANT, readers=("*",))
            ingestor.ingest_document(doc_id, data=text.encode(), fmt="md", title=title, access=access)
