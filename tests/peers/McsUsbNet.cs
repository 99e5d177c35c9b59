// A stand-in for the part of Multi Channel Systems' McsUsbNet.dll that rigpipe's
// stg backend calls (workers/stimulation/stg.py, STG_API): same namespace, class
// and method names and parameter types. Compiled during the tests with
//     mcs -target:library -out:McsUsbNet.dll McsUsbNet.cs
// and loaded through pythonnet exactly as the vendor DLL is.
//
// It behaves like an STG in streaming mode: one queue per channel, filled by
// the host with EnqueueData and drained by a device thread at the output rate
// in real time once SendStart ran. Everything it "output" is kept; on
// Disconnect it writes, into the directory MCS_STANDIN_OUTPUT, one raw int16
// file per channel (channel<N>.i16) and summary.json (samples, underruns).
// An underrun is a device tick that found fewer samples queued than were due,
// after the host had queued data on that channel.
// MCS_STANDIN_DEVICES lists the connected devices as "name:serial,..."
// (default "STG4004:4711"; empty: none connected).
//
// What the vendor documents (McsUsbNet.xml, release 5.3.15) and this models:
// - with continuous mode off (the default), "the triggers are stopped
//   automatically when a buffer runs empty": an underrun stops the channel's
//   output for good, until SendStart; EnableContinousMode keeps it running;
// - SetCapacity takes bytes per trigger, and their sum must not exceed
//   GetTotalMemory() (MCS_STANDIN_TOTAL_MEMORY bytes, default 4 MiB); a sum over
//   it is refused with an exception;
// - the data handler is called for a trigger whose queue fell below its
//   callback threshold (percent of the ring buffer); the error handler is where
//   streaming errors arrive: MCS_STANDIN_ERROR_AFTER_S makes the device raise one
//   that long after StartLoop.
// Member signatures, return types included, are those of the real assembly
// (tests/peers/test_stg.py compares them by reflection).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;

namespace Mcs.Usb
{
    public enum DeviceEnumNet { MCS_DEVICE_USB = 0, MCS_STG_DEVICE = 1, MCS_MEA_DEVICE = 2 }

    public class CMcsUsbListEntryNet
    {
        public CMcsUsbListEntryNet(string name, string serial) { DeviceName = name; SerialNumber = serial; }
        public string DeviceName { get; private set; }
        public string SerialNumber { get; private set; }
    }

    public class CMcsUsbListNet
    {
        private readonly List<CMcsUsbListEntryNet> entries = new List<CMcsUsbListEntryNet>();

        public CMcsUsbListNet(DeviceEnumNet kind)
        {
            string listed = Environment.GetEnvironmentVariable("MCS_STANDIN_DEVICES") ?? "STG4004:4711";
            if (kind != DeviceEnumNet.MCS_STG_DEVICE) return;
            foreach (string item in listed.Split(new[] { ',' }, StringSplitOptions.RemoveEmptyEntries))
            {
                string[] parts = item.Split(':');
                entries.Add(new CMcsUsbListEntryNet(parts[0], parts.Length > 1 ? parts[1] : "0"));
            }
        }

        public uint Count { get { return (uint)entries.Count; } }

        public CMcsUsbListEntryNet GetUsbListEntry(uint index) { return entries[(int)index]; }
    }

    public delegate void OnStg200xDataHandler(uint trigger);
    public delegate void OnStg200xErrorHandler();

    public class CStg200xStreamingNet
    {
        private const int Channels = 4;
        private const int Triggers = 4;
        private readonly uint bufferSize;
        private readonly object sync = new object();
        private readonly Queue<short>[] queues = new Queue<short>[Channels];
        private readonly List<short>[] output = new List<short>[Channels];
        private readonly long[] underruns = new long[Channels];
        private readonly long[] firstUnderrun = new long[] { -1, -1, -1, -1 };
        private readonly bool[] fed = new bool[Channels];
        private uint outputRate = 50000;
        private uint running;  // bit mask of started channels
        private uint[] channelMap = new uint[Triggers];
        private uint[] threshold = new uint[Triggers];
        private bool connected, currentMode, looping, continuous;
        private Thread device;
        private readonly OnStg200xDataHandler onData;
        private readonly OnStg200xErrorHandler onError;

        public CStg200xStreamingNet(uint bufferSize) : this(bufferSize, null, null) { }

        public CStg200xStreamingNet(uint bufferSize, OnStg200xDataHandler onData, OnStg200xErrorHandler onError)
        {
            this.bufferSize = bufferSize;
            this.onData = onData;
            this.onError = onError;
            for (int c = 0; c < Channels; c++) { queues[c] = new Queue<short>(); output[c] = new List<short>(); }
        }

        public uint Connect(CMcsUsbListEntryNet entry)
        {
            if (entry == null) return 1;
            connected = true;
            return 0;
        }

        public void EnableContinousMode() { Require(); continuous = true; }
        public void DisableContinousMode() { Require(); continuous = false; }

        public uint GetTotalMemory()
        {
            string configured = Environment.GetEnvironmentVariable("MCS_STANDIN_TOTAL_MEMORY");
            return string.IsNullOrEmpty(configured) ? 4u << 20 : uint.Parse(configured);
        }

        public void Disconnect()
        {
            StopLoop();
            if (connected) Dump();
            connected = false;
        }

        public void SetCurrentMode() { Require(); currentMode = true; }

        public void SetOutputRate(uint rate)
        {
            Require();
            if (rate < 1000 || rate > 50000) throw new ArgumentOutOfRangeException("rate", "1000..50000 Hz");
            outputRate = rate;
        }

        public uint GetNumberOfAnalogChannels() { return Channels; }
        public uint GetNumberOfTriggerInputs() { return Triggers; }
        public int GetCurrentRangeInNanoAmp(uint channel) { return 1600000; }
        public int GetCurrentResolutionInNanoAmp(uint channel) { return 100; }

        public void SetCapacity(uint[] capacity)
        {
            Require();
            if (capacity.Length != Triggers) throw new ArgumentException("one capacity per trigger");
            ulong sum = 0;
            foreach (uint bytes in capacity) sum += bytes;
            if (sum > GetTotalMemory())
                throw new ArgumentException("capacity sum " + sum + " exceeds the total memory " + GetTotalMemory());
        }

        public void SetupTrigger(uint[] channelmap, uint[] syncoutmap, uint[] digoutmap, uint[] autostart, uint[] callbackThreshold)
        {
            Require();
            if (channelmap.Length != Triggers) throw new ArgumentException("one entry per trigger");
            channelMap = (uint[])channelmap.Clone();
            threshold = (uint[])callbackThreshold.Clone();
        }

        public void StartLoop()
        {
            Require();
            if (!currentMode) throw new InvalidOperationException("SetCurrentMode first");
            looping = true;
            device = new Thread(Run) { IsBackground = true, Name = "stg-standin" };
            device.Start();
        }

        public void StopLoop()
        {
            looping = false;
            if (device != null) { device.Join(); device = null; }
        }

        public void SendStart(uint triggerMap)
        {
            Require();
            lock (sync) { running |= Channelmask(triggerMap); }
        }

        public void SendStop(uint triggerMap)
        {
            lock (sync) { running &= ~Channelmask(triggerMap); }
        }

        public uint GetDataQueueSpace(uint channel)
        {
            lock (sync) { return bufferSize - (uint)queues[channel].Count; }
        }

        public uint EnqueueData(uint channel, short[] data)
        {
            Require();
            lock (sync)
            {
                if (queues[channel].Count + data.Length > bufferSize)
                    throw new InvalidOperationException("queue overflow on channel " + channel);
                foreach (short sample in data) queues[channel].Enqueue(sample);
                fed[channel] = true;
            }
            return (uint)data.Length * 2;  // "Returns the number of enqueued bytes"
        }

        private uint Channelmask(uint triggerMap)
        {
            uint mask = 0;
            for (int t = 0; t < Triggers; t++)
                if ((triggerMap & (1u << t)) != 0) mask |= channelMap[t];
            return mask;
        }

        private void Require()
        {
            if (!connected) throw new InvalidOperationException("not connected");
        }

        private void Run()
        {
            Stopwatch clock = Stopwatch.StartNew();
            string errorAfter = Environment.GetEnvironmentVariable("MCS_STANDIN_ERROR_AFTER_S");
            double errorAt = string.IsNullOrEmpty(errorAfter) ? double.MaxValue : double.Parse(errorAfter);
            long done = 0;
            while (looping)
            {
                Thread.Sleep(1);
                if (clock.Elapsed.TotalSeconds >= errorAt)
                {
                    errorAt = double.MaxValue;
                    if (onError != null) onError();
                }
                long due = (long)(clock.Elapsed.TotalSeconds * outputRate) - done;
                if (due <= 0) continue;
                List<uint> low = new List<uint>();
                lock (sync)
                {
                    for (int c = 0; c < Channels; c++)
                    {
                        if ((running & (1u << c)) == 0) continue;
                        Queue<short> queue = queues[c];
                        bool underrun = fed[c] && queue.Count < due;
                        if (underrun)
                        {
                            if (underruns[c]++ == 0) firstUnderrun[c] = output[c].Count + queue.Count;
                        }
                        for (long i = 0; i < due; i++)
                            output[c].Add(queue.Count > 0 ? queue.Dequeue() : (short)0);
                        if (underrun && !continuous) running &= ~(1u << c);  // the trigger stops
                    }
                    for (uint t = 0; t < Triggers; t++)
                        for (int c = 0; c < Channels; c++)
                            if (threshold[t] > 0 && (channelMap[t] & (1u << c)) != 0
                                && (ulong)queues[c].Count * 100 < (ulong)threshold[t] * bufferSize)
                            { low.Add(t); break; }
                }
                done += due;
                if (onData != null) foreach (uint t in low) onData(t);
            }
        }

        private void Dump()
        {
            string directory = Environment.GetEnvironmentVariable("MCS_STANDIN_OUTPUT");
            if (string.IsNullOrEmpty(directory)) return;
            Directory.CreateDirectory(directory);
            StringBuilder summary = new StringBuilder("{\"output_rate_hz\": " + outputRate + ", \"channels\": [");
            lock (sync)
            {
                for (int c = 0; c < Channels; c++)
                {
                    using (BinaryWriter writer = new BinaryWriter(File.Create(Path.Combine(directory, "channel" + c + ".i16"))))
                        foreach (short sample in output[c]) writer.Write(sample);
                    if (c > 0) summary.Append(", ");
                    summary.Append("{\"samples\": " + output[c].Count + ", \"underruns\": " + underruns[c] + ", \"first_underrun_at\": " + firstUnderrun[c] + "}");
                }
            }
            summary.Append("]}");
            File.WriteAllText(Path.Combine(directory, "summary.json"), summary.ToString());
        }
    }
}
