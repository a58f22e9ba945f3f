from hygieia.cli import main

raise SystemExit(main())
