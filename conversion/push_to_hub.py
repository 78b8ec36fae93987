"""Upload a converted or trained hf_medmamba folder to the Hugging Face Hub as one commit: weights, config,
processor config, remote-code files and model card (README.md).

Before uploading, the folder's remote-code files are scanned for unsafe code and the folder is loaded with
trust_remote_code=True in a fresh process. --dry-run stops there and lists the files (sizes, SHA-256). The token
comes from `huggingface-cli login` / `hf auth login` or HF_TOKEN; it is never printed or written anywhere.

Example:
    python conversion/push_to_hub.py out/vmunet-isic18 --repo-id me/vmunet-isic18 --private --dry-run
"""

import argparse
import sys
from pathlib import Path

from hf_medmamba.tools.convert import run_cli
from hf_medmamba.tools.hub import push_folder


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("folder", help="converted or trained folder (config.json, model.safetensors, README.md, ...)")
    parser.add_argument("--repo-id", required=True, help="target repository, e.g. namespace/model-name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="check and list the files, upload nothing")
    parser.add_argument("--no-verify", action="store_true", help="skip the fresh-process trust_remote_code check")
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="write README.md (model card) from the folder's config and processor when it has none",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = Path(args.folder)
    if args.write_card and not (folder / "README.md").exists():
        from hf_medmamba.tools.model_card import card_for_folder

        card_for_folder(folder, repo_id=args.repo_id).save(folder / "README.md")
        print(f"wrote {folder / 'README.md'}")
    return push_folder(
        folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        verify=not args.no_verify,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
