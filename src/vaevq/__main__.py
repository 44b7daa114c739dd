from vaevq.cli.main import main

raise SystemExit(main())
