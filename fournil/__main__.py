from fournil.cli import main

raise SystemExit(main())
