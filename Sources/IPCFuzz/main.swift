import IPC
_ = IPCProtocol.version
