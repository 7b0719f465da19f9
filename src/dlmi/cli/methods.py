"""`dlmi methods [NAME] [--json]`: the registered methods, or one method's options."""

from __future__ import annotations

import json

from dlmi.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the inversion methods, or one method's options",
                       description="Without NAME: every method and what it does. With NAME: "
                                   "its options, their defaults, what they do and where the "
                                   "default comes from (set them with --set KEY=VALUE).")
    p.add_argument("name", nargs="?", default=None, help="a method name, e.g. dlmi-search")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run)


def run(args) -> int:
    from dlmi.inversion.option_docs import options_of
    from dlmi.methods.registry import DEFAULT_METHOD, get_method, method_names

    if args.name is None:
        listing = [{"name": n, "description": get_method(n).description,
                    "default": n == DEFAULT_METHOD} for n in method_names()]
        if args.json:
            print(json.dumps(listing, indent=2))
            return 0
        width = max(len(m["name"]) for m in listing)
        for m in listing:
            mark = " (default)" if m["default"] else ""
            print(f"{m['name']:<{width}}  {m['description']}{mark}")
        return 0
    if args.name not in method_names():
        raise UsageError(f"unknown method {args.name!r}; known methods: "
                         f"{', '.join(method_names())}")
    cls = get_method(args.name)
    options = options_of(cls.config_class)
    if args.json:
        print(json.dumps({"name": args.name, "description": cls.description,
                          "options": options}, indent=2))
        return 0
    print(f"{args.name}: {cls.description}\n")
    width = max(len(o["name"]) for o in options)
    for o in options:
        source = f" [{o['source']}]" if o["source"] else ""
        print(f"  {o['name']:<{width}}  {o['type']:<10} {json.dumps(o['default']):<12} "
              f"{o['help']}{source}")
    print("\nset with --set KEY=VALUE (invert) or --set METHOD.KEY=VALUE (bench)")
    return 0
