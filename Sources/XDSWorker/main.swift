XDSWorkerMain.run()
