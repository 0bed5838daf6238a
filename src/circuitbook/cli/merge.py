"""circuitbook merge SHARD.db ... --book OUT.db: combine `scan --shard i/n` books into one."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge shard books from `scan --shard i/n` into one book", description=__doc__)
    p.add_argument("shards", nargs="+", help="the n shard books (0/n ... n-1/n)")
    p.add_argument("--book", required=True, help="output book")
    p.add_argument("--overwrite", action="store_true", help="replace a scan already in the output book")
    p.add_argument("--keep-state", action="store_true", help="keep the merged state (to merge again later)")
    p.set_defaults(func=run, writes=("book",))


def run(args) -> int:
    from ..book import Book
    from ..scan import merge_books

    for shard in args.shards:
        Book.check(shard, must_exist=True)
    Book.check(args.book)

    prog = merge_books(args.shards, args.book, overwrite=args.overwrite, keep_state=args.keep_state)
    print(f"merged {len(args.shards)} shards: {prog['tokens']:,} tokens in {prog['sequences']:,} sequences -> {args.book}")
    return 0
